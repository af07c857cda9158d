/**
 * The kernel's diagnostics exports (`ffi/src/diagnostics.rs`): a deliberate
 * panic, a kernel-side ring producer/consumer, a buffer checksum and the
 * callback-per-record baseline. They are not part of the kernel's ABI, so
 * they are not in the SDK's symbol table; tests and benches open them from
 * the same library file the SDK loaded (opening a loaded library again maps
 * nothing new, and its last error is the SDK's).
 *
 * @module
 */

import { diagnosticsSymbols } from "../bindings/_gen/diagnostics_symbols.ts";
import { libraryPath } from "./_helpers.ts";

export {
  KREPIS_RING_DIAG_CLOSE_WHEN_DONE,
  KREPIS_RING_DIAG_FILL,
} from "../bindings/_gen/diagnostics_symbols.ts";

let library: Deno.DynamicLibrary<typeof diagnosticsSymbols> | undefined;

/** The diagnostics exports of the library named by `KREPIS_LIBRARY_PATH` (opened once). */
export function diagnostics(): Deno.DynamicLibrary<typeof diagnosticsSymbols>["symbols"] {
  library ??= Deno.dlopen(libraryPath(), diagnosticsSymbols);
  return library.symbols;
}
