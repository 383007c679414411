// One Responses stream read by the Node openai package, for tests/test_node_client.py.
// Usage: node responses_stream.mjs BASE_URL MODEL INPUT
// Prints one JSON line per event as the SDK yields it (with its arrival time in ms), then the
// final response of the SDK's own responses.stream() helper for the same request.
import OpenAI from "openai";

const [baseURL, model, input] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "x", maxRetries: 0 });
const started = performance.now();

const stream = await client.responses.create({ model, input, stream: true });
for await (const event of stream) {
  const at = performance.now() - started;
  console.log(JSON.stringify({ at, type: event.type, seq: event.sequence_number, delta: event.delta ?? null }));
}

const helper = client.responses.stream({ model, input });
const final = await helper.finalResponse();
console.log(JSON.stringify({ final: { model: final.model, text: final.output_text, status: final.status, usage: final.usage } }));
