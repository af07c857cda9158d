/**
 * Argument checks shared by the SDK's option parsers. Each one throws an
 * {@linkcode InvalidArgumentError} whose message names the field and whose
 * `details.field` names it for code. Checks that only one capability needs
 * (store keys, HTTP routes, guard paths) stay with that capability.
 *
 * @module
 */

import { InvalidArgumentError } from "./errors.ts";

/** Throws `${field} ${problem}` as an `InvalidArgumentError` naming `field`. */
export function invalidArgument(field: string, problem: string): never {
  throw new InvalidArgumentError(`${field} ${problem}`, { details: { field } });
}

/** `value` as an integer in `[min, max]`, or an `InvalidArgumentError` naming `field`. */
export function checkInteger(field: string, value: unknown, min: number, max: number): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max) {
    throw new InvalidArgumentError(
      `${field} must be an integer from ${min} to ${max}, got ${
        typeof value === "number" ? value : typeof value
      }`,
      { details: { field } },
    );
  }
  return value;
}

/**
 * The options argument of an API call (`what` names the call): any non-null
 * object. The message has no `details.field`, since the argument is not a field.
 */
export function checkOptions<T>(what: string, options: T): T {
  if (typeof options !== "object" || options === null) {
    throw new InvalidArgumentError(`${what} options must be an object`);
  }
  return options;
}

/** A nested option that must be a plain object (not `null`, not an array). */
export function checkObject(field: string, value: unknown): Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    invalidArgument(field, "must be an object");
  }
  return value as Record<string, unknown>;
}

/** A required non-empty string. */
export function checkString(field: string, value: unknown): string {
  if (typeof value !== "string" || value === "") {
    invalidArgument(field, "must be a non-empty string");
  }
  return value;
}

/** An optional non-empty string: `""` when absent. */
export function checkOptionalString(field: string, value: unknown): string {
  return value === undefined ? "" : checkString(field, value);
}

/** An optional array of strings: `[]` when absent. */
export function checkStringList(field: string, value: unknown): string[] {
  if (value === undefined) return [];
  if (!Array.isArray(value) || value.some((item) => typeof item !== "string")) {
    invalidArgument(field, "must be an array of strings");
  }
  return value;
}
