/**
 * Argument checks shared by the SDK's option parsers.
 *
 * @module
 */

import { InvalidArgumentError } from "./errors.ts";

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
