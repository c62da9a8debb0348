/** What API handlers are given: the database, the config, the logger, notifications. */

import type { Principal } from "../auth/principal.js";
import type { Keyring } from "../auth/secrets.js";
import type { ControlPlaneConfig } from "../config/config.js";
import type { EndpointPolicy } from "../domain/endpoints.js";
import type { Logger } from "../logger.js";
import type { BatchLifecycle } from "../metrics/batch-lifecycle.js";
import type { ControlPlaneMetrics } from "../metrics/control-plane-metrics.js";
import type { Fleet } from "../metrics/fleet.js";
import type { Db } from "../storage/db.js";
import type { Notifications } from "../storage/notifications.js";

export interface ApiDeps {
  db: Db;
  config: Readonly<ControlPlaneConfig>;
  log: Logger;
  notifications: Notifications;
  /** Aborts when the server shuts down: long polls and streams end. */
  shutdownSignal: AbortSignal;
  /** Encrypts upstream API keys at rest (src/auth/secrets.ts). */
  keyring: Keyring;
  /** The outbound allow-list files are checked against (docs/trust.md). */
  endpointPolicy: () => EndpointPolicy;
  /**
   * The auth interceptor's check of a credential (authorization header,
   * Host), asked again while a stream runs (./stream-auth.ts).
   */
  authenticate: (authorization: string | null, host: string | null) => Promise<Principal>;
  /** Called after a token was revoked here (other replicas hear NOTIFY fusillade_tokens). */
  tokensChanged?: () => void;
  /** Lifecycle logs and counters of batches (docs/observability.md). */
  lifecycle?: BatchLifecycle;
  /** Stream subscriber gauges. */
  metrics?: ControlPlaneMetrics;
  /** The dispatchers calling this control plane (joined/left logs). */
  fleet?: Fleet;
}
