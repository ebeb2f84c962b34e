// How a failed request is told: RequestError carries a protocol error code, and every failure
// (of the store, an engine, or anything else) becomes one before it reaches a client.

import type { ErrorCode, SupervisorMessage } from '../../protocol/checkpoint-protocol';
import { EngineError } from '../engines/engine';
import { StoreError } from '../store/store';

/** A failed request: what the client gets as ErrorReply. */
export class RequestError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly detail?: string
  ) {
    super(message);
  }
}

export function asRequestError(error: unknown): RequestError {
  if (error instanceof RequestError) {
    return error;
  }
  if (error instanceof StoreError || error instanceof EngineError) {
    return new RequestError(error.code, error.message, (error as EngineError).detail);
  }
  return new RequestError('engine_failed', (error as Error)?.message ?? String(error));
}

/** The ErrorReply for a request that failed. */
export function errorMessage(
  requestId: string,
  action: string,
  error: RequestError
): SupervisorMessage {
  return {
    type: 'error',
    request_id: requestId,
    action,
    error: {
      code: error.code,
      message: error.message,
      ...(error.detail ? { detail: error.detail } : {})
    }
  };
}
