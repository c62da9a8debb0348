/** The process logger (pino, JSON lines on stderr). API keys are redacted wherever they appear. */
import { pino } from "pino";

export type Logger = pino.Logger;

/** A logger at `level` ("silent" for none). */
export function makeLogger(level: string, name = "fusillade"): Logger {
  return pino(
    {
      name,
      level,
      redact: {
        paths: [
          "apiKey",
          "api_key",
          "*.apiKey",
          "*.api_key",
          "headers.authorization",
          "*.headers.authorization",
        ],
        censor: "[redacted]",
      },
    },
    pino.destination(2),
  );
}
