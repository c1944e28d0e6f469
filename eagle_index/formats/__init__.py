"""Readers and writers of the file formats users already have (EAGLE, STAMP, CSV tables).

Pure parsing: nothing here touches the catalog. Every error names the file (and dataset).
"""
