// ESLint (flat config) for the web UI's own scripts: web/static/js, ES modules in the browser.
// Run by `make lint-js` (and so `make test`) from the repository root with --config, so the
// patterns below are relative to the root. web/static/vendor (copied from npm) is not ours.
import js from "@eslint/js";
import globals from "globals";

export default [
  { ignores: ["web/static/vendor/**", "web/frontend/**"] },
  {
    files: ["web/static/js/**/*.js"],
    languageOptions: { ecmaVersion: 2022, sourceType: "module", globals: { ...globals.browser } },
    rules: {
      ...js.configs.recommended.rules,
      "no-unused-vars": ["error", { args: "after-used", argsIgnorePattern: "^_", caughtErrors: "none" }],
      eqeqeq: ["error", "always"],
      "no-var": "error",
      "prefer-const": "error",
    },
  },
];
