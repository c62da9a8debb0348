/** OpenAI's list pages (`after` an id, newest first) over BatchService's page tokens. */
import { scopeOf } from "../auth/principal.js";
import { pageTokenAfter } from "../storage/openai-views.js";
import type { Call } from "./call.js";
import { badParam } from "./http.js";

/** The page token of the `after` query parameter ("" for the first page); 400 for an unknown id. */
export async function afterToken(call: Call, table: "files" | "batches"): Promise<string> {
  const after = call.query.get("after");
  if (after === null || after === "") return "";
  const token = await pageTokenAfter(call.deps.db, table, scopeOf(call.principal), after);
  if (token === undefined) {
    throw badParam("after", `no ${table === "files" ? "file" : "batch"} ${JSON.stringify(after)}`);
  }
  return token;
}

/** OpenAI's list object. */
export function listObject<T extends { id: string }>(data: T[], hasMore: boolean) {
  return {
    object: "list",
    data,
    first_id: data[0]?.id ?? null,
    last_id: data[data.length - 1]?.id ?? null,
    has_more: hasMore,
  };
}
