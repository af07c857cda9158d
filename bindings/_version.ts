/**
 * The package version: the library must report exactly this. Bumped with every
 * other version site by `cargo release` (see RELEASING.md); checked by
 * `deno task release:check`.
 */
export const VERSION = "0.1.0";
