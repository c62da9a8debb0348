/**
 * The process logger (pino). JSON lines on stderr for machines; readable
 * lines when stderr is a terminal. API keys are redacted wherever they appear.
 */
import { pino } from "pino";
import pretty from "pino-pretty";

export type Logger = pino.Logger;

/** A logger at `level` ("silent" for none); `readable` defaults to "stderr is a terminal". */
export function makeLogger(
  level: string,
  name = "fusillade",
  readable = process.stderr.isTTY === true,
): Logger {
  const options: pino.LoggerOptions = {
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
  };
  if (readable) {
    return pino(
      options,
      pretty({ destination: 2, colorize: true, ignore: "pid,hostname,name", sync: true }),
    );
  }
  return pino(options, pino.destination(2));
}
