/**
 * Domain errors: thrown below the API, mapped to gRPC codes once, in
 * src/api/errors.ts. Nothing below the API throws ConnectError.
 */

/** Base of every error Fusillade raises on purpose. */
export class FusilladeError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** Bad input: names the field and, for file content, the 1-based line. */
export class InvalidArgumentError extends FusilladeError {
  constructor(
    readonly field: string,
    readonly reason: string,
    readonly line?: number,
    options?: ErrorOptions,
  ) {
    super(`${line === undefined ? "" : `line ${line}: `}${field}: ${reason}`, options);
  }
}

/** The named resource does not exist. */
export class NotFoundError extends FusilladeError {
  constructor(
    readonly resource: string,
    readonly id: string,
  ) {
    super(`${resource} ${JSON.stringify(id)} not found`);
  }
}

/** The operation does not apply in the resource's current state. */
export class FailedPreconditionError extends FusilladeError {}

/** A resource with that identity already exists. */
export class AlreadyExistsError extends FusilladeError {}

/** Capacity or a size limit was exceeded. */
export class ResourceExhaustedError extends FusilladeError {}

/** A dependency (the database) cannot be reached now; the call may be retried. */
export class UnavailableError extends FusilladeError {}
