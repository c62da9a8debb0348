/**
 * The basic example, from TypeScript: a file of two request templates, a
 * batch from it, its status, and its requests with their responses.
 *
 *   npm run build && npx tsc -p examples/typescript
 *   node examples/typescript/dist/basic.js --server http://127.0.0.1:8080 --endpoint https://api.example.com
 *
 * Exit status: 0 when the batch finished, 1 on an error.
 */
import { parseArgs } from "node:util";
import { createFusilladeClient, FusilladeError, responseText } from "fusillade/client";

const { values } = parseArgs({
  options: {
    server: { type: "string", default: "http://127.0.0.1:8080" },
    endpoint: { type: "string" },
    "api-key": { type: "string", default: process.env.OPENAI_API_KEY },
    // An API token (docs/trust.md); none is needed for a local `fusillade serve`.
    token: { type: "string", default: process.env.FUSILLADE_TOKEN },
  },
});
if (values.endpoint === undefined) {
  console.error("usage: basic.js --server URL --endpoint URL [--api-key KEY] [--token TOKEN]");
  process.exit(2);
}

const fusillade = createFusilladeClient({ baseUrl: values.server!, token: values.token });
try {
  // A file of two templates (the templates form; `uploadFile` sends a JSONL file instead).
  const file = await fusillade.createFile({
    filename: "basic-example",
    templates: ["What is 2+2?", "Name a prime number."].map((question, i) => ({
      customId: `question-${i + 1}`,
      endpoint: values.endpoint!,
      path: "/v1/chat/completions",
      body: { model: "gpt-4o-mini", messages: [{ role: "user", content: question }] },
      apiKey: values["api-key"],
    })),
  });
  console.log(`file ${file.id}: ${file.templateCount} templates, models ${file.models.join(", ")}`);

  const batch = await fusillade.createBatch(file.id, { metadata: { example: "basic" } });
  console.log(`batch ${batch.id} created`);

  // Its status, as it changes, until it is finished.
  for await (const b of fusillade.watchBatch(batch.id)) {
    const c = b.counts;
    console.log(
      `status: ${b.state}, ${c.completed + c.failed}/${c.total} done (${c.failed} failed)`,
    );
  }
  const status = await fusillade.getBatchStatus(batch.id);
  console.log(`batch ${status.batchId} ${status.openaiStatus}`);

  // Its requests, with their responses.
  for await (const page of fusillade.listRequests(batch.id)) {
    for (const r of page) {
      const outcome =
        r.state === "completed"
          ? `${r.response?.statusCode} ${responseText(r.response)}`
          : `${r.error?.code}: ${r.error?.message}`;
      console.log(`request ${r.customId}: ${outcome}`);
    }
  }
} catch (e) {
  if (!(e instanceof FusilladeError)) throw e;
  console.error(`fusillade: ${e.codeName}: ${e.rawMessage}`);
  process.exitCode = 1;
} finally {
  fusillade.close();
}
