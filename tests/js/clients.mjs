// The official JavaScript clients against a running server, one named check per call.
//
//   HIDREAM_SERVER_URL=http://127.0.0.1:8000 node tests/js/clients.mjs [--timeout SECONDS] [NAME-PART ...]
//
// (the server's URL as `hidream run` takes it; each check gets --timeout seconds, 60 by default;
// NAME-PARTs run only the checks whose names contain one of them).
//
// Each check makes one call of the README's "JavaScript clients" section with tiny inputs, then
// checks what came back: every image is fetched (or decoded) and must parse as a PNG or JPEG, and
// every streaming call must show progress before its result; the readme.* checks run the section's
// snippets themselves, as written but for the server's URL. The last line on stdout is one JSON report,
// {"checks": {name: "ok" | error}, "details": {name: what was seen}}; the exit status is 1 when
// any check failed. An unhandled rejection or uncaught exception anywhere in the run fails the
// check "process.no_unhandled_errors" (and the run goes on), as it would have killed a real program.
// tests/integration/test_js_clients.py starts a server with tiny weights and runs this.

import { fal } from "@fal-ai/client";
import OpenAI, { toFile } from "openai";
import Replicate from "replicate";
import { Client as WaveSpeed } from "wavespeed";
import { mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { deflateSync } from "node:zlib";

// Node.js 18 (Debian bookworm's) has no global File, which openai's uploads need; its error says to
// set it so. Node.js 20 and later have it.
globalThis.File ??= (await import("node:buffer")).File;

const SERVER = (process.env.HIDREAM_SERVER_URL ?? "").replace(/\/+$/, "");
if (!SERVER) {
  console.error("set HIDREAM_SERVER_URL to the server's base URL, e.g. http://127.0.0.1:8000");
  process.exit(2);
}
const args = process.argv.slice(2);
const timeoutAt = args.indexOf("--timeout");
const CHECK_TIMEOUT_MS = timeoutAt >= 0 ? Number(args.splice(timeoutAt, 2)[1]) * 1000 : 60_000;
const only = args;

// The tiny endpoints: I1 Full with a few steps renders a real (noise) image in well under a
// second on tiny weights; noop pretends to work step by step, so progress is there to be seen.
const I1 = "fal-ai/hidream-i1-full";
const NOOP = "hidream/noop";
const I1_INPUT = { prompt: "a red fox in snow", num_inference_steps: 2, seed: 7 };
const NOOP_INPUT = { prompt: "progress", num_steps: 6, step_seconds: 0.15 };
const STREAMED_STEPS = 16; // previews come every few steps: room for partial images before the end
const MIN_IMAGE_BYTES = 60; // a complete 1x1 PNG (noop's) is 69 bytes; anything shorter is cut off

// -- The clients, configured as the README says ------------------------------------------------

// In a browser `proxyUrl: "/api/fal/proxy"` is enough; elsewhere the client applies a proxy only when told to.
fal.config({ proxyUrl: { url: `${SERVER}/api/fal/proxy`, when: "always" } });
const openai = new OpenAI({ apiKey: "unused", baseURL: `${SERVER}/v1`, maxRetries: 0 });
const replicate = new Replicate({ auth: "unused", baseUrl: `${SERVER}/v1` });
const wavespeed = new WaveSpeed("unused", { baseUrl: SERVER });

// -- Images ------------------------------------------------------------------------------------

/** A small RGB PNG made here (a gradient), to upload and to edit. */
function makePng(width = 64, height = 48) {
  const rows = [];
  for (let y = 0; y < height; y++) {
    const row = Buffer.alloc(1 + width * 3); // filter byte 0, then RGB
    for (let x = 0; x < width; x++) {
      row.set([(x * 255) / width, (y * 255) / height, 128], 1 + x * 3);
    }
    rows.push(row);
  }
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header.set([8, 2, 0, 0, 0], 8); // 8-bit RGB, deflate, no interlace
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    pngChunk("IHDR", header),
    pngChunk("IDAT", deflateSync(Buffer.concat(rows))),
    pngChunk("IEND", Buffer.alloc(0)),
  ]);
}

function pngChunk(type, data) {
  const typed = Buffer.concat([Buffer.from(type, "ascii"), data]);
  const length = Buffer.alloc(4);
  length.writeUInt32BE(data.length);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(typed));
  return Buffer.concat([length, typed, crc]);
}

function crc32(bytes) {
  let crc = 0xffffffff;
  for (const byte of bytes) {
    crc ^= byte;
    for (let bit = 0; bit < 8; bit++) crc = (crc >>> 1) ^ (0xedb88320 & -(crc & 1));
  }
  return (crc ^ 0xffffffff) >>> 0;
}

/** Width, height and format of a complete PNG or JPEG; throws for anything else. */
function parseImage(bytes, what) {
  if (bytes.length < MIN_IMAGE_BYTES) throw new Error(`${what}: ${bytes.length} bytes is too short for an image`);
  const isPng = bytes.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));
  if (isPng) {
    if (bytes.toString("ascii", 12, 16) !== "IHDR") throw new Error(`${what}: a PNG without IHDR`);
    if (bytes.toString("ascii", bytes.length - 8, bytes.length - 4) !== "IEND") {
      throw new Error(`${what}: a PNG cut off before IEND`);
    }
    return checkedSize("png", bytes.readUInt32BE(16), bytes.readUInt32BE(20), what);
  }
  if (bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff) {
    if (bytes[bytes.length - 2] !== 0xff || bytes[bytes.length - 1] !== 0xd9) {
      throw new Error(`${what}: a JPEG cut off before its end marker`);
    }
    let offset = 2;
    while (offset + 9 < bytes.length && bytes[offset] === 0xff) {
      const marker = bytes[offset + 1];
      const isFrameHeader = marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker);
      if (isFrameHeader) {
        return checkedSize("jpeg", bytes.readUInt16BE(offset + 7), bytes.readUInt16BE(offset + 5), what);
      }
      offset += 2 + bytes.readUInt16BE(offset + 2);
    }
    throw new Error(`${what}: a JPEG without a frame header`);
  }
  throw new Error(`${what}: neither PNG nor JPEG (starts ${bytes.subarray(0, 8).toString("hex")})`);
}

function checkedSize(format, width, height, what) {
  if (width < 1 || height < 1) throw new Error(`${what}: a ${format} of ${width}x${height}`);
  return { format, width, height };
}

/** The bytes of an image the API answered with: a URL, a data URI or bare base64. */
async function imageBytes(ref, what) {
  if (typeof ref !== "string" || ref.length === 0) throw new Error(`${what}: no image in ${JSON.stringify(ref)}`);
  if (ref.startsWith("data:")) return Buffer.from(ref.slice(ref.indexOf(",") + 1), "base64");
  if (/^https?:\/\//.test(ref)) {
    const response = await fetch(ref);
    if (!response.ok) throw new Error(`${what}: GET ${ref} answered ${response.status}`);
    return Buffer.from(await response.arrayBuffer());
  }
  return Buffer.from(ref, "base64");
}

/** Fetches or decodes one image, checks it, and compares its size with the one reported. */
async function checkImage(ref, what, reported = {}) {
  const image = parseImage(await imageBytes(ref, what), what);
  if (reported.width !== undefined && (image.width !== reported.width || image.height !== reported.height)) {
    throw new Error(`${what}: reported ${reported.width}x${reported.height}, is ${image.width}x${image.height}`);
  }
  return `${image.width}x${image.height} ${image.format}`;
}

/** fal's output object: checks its first image. */
function checkFalImages(output, what) {
  const image = output?.images?.[0];
  if (!image) throw new Error(`${what}: no images in ${JSON.stringify(output).slice(0, 300)}`);
  return checkImage(image.url, what, { width: image.width, height: image.height });
}

function assert(condition, message) {
  if (!condition) throw new Error(message);
}

// -- The checks --------------------------------------------------------------------------------

const checks = [];
const check = (name, run) => checks.push({ name, run });

check("fal.subscribe", async () => {
  const statuses = [];
  const result = await fal.subscribe(I1, {
    input: I1_INPUT,
    logs: true,
    onQueueUpdate: (update) => statuses.push(update.status),
  });
  const image = await checkFalImages(result.data, "result");
  assert(statuses.at(-1) === "COMPLETED", `last status ${statuses.at(-1)}`);
  return `${image}; statuses ${[...new Set(statuses)].join(",")}`;
});

check("fal.subscribe.streaming", async () => {
  let requestId;
  let accumulatedLogs = [];
  const statusesBeforeResult = [];
  const result = await fal.subscribe(NOOP, {
    input: NOOP_INPUT,
    mode: "streaming",
    logs: true,
    onEnqueue: (id) => (requestId = id),
    onQueueUpdate: (update) => {
      statusesBeforeResult.push(update.status);
      if (update.logs) accumulatedLogs = update.logs; // the client's own running list of lines
    },
  });
  const image = await checkFalImages(result.data, "result");
  assert(statusesBeforeResult.includes("IN_PROGRESS"), `no IN_PROGRESS event: ${statusesBeforeResult.join(",")}`);
  // The job's real log, read once it is done, against the lines the client put together.
  const status = await fal.queue.status(NOOP, { requestId, logs: true });
  const written = status.logs.map((line) => line.message);
  const received = accumulatedLogs.map((line) => line.message);
  assert(
    JSON.stringify(received) === JSON.stringify(written),
    `the client holds ${received.length} log lines for ${written.length} written (duplicated or lost): ` +
      JSON.stringify(received.slice(0, 12)),
  );
  return `${image}; ${statusesBeforeResult.length} events, ${received.length} log lines as written`;
});

check("fal.run", async () => {
  const result = await fal.run(I1, { input: I1_INPUT });
  return checkFalImages(result.data, "result");
});

check("fal.stream", async () => {
  const stream = await fal.stream(I1, { input: { ...I1_INPUT, num_inference_steps: STREAMED_STEPS } });
  const events = [];
  for await (const event of stream) events.push(event);
  const result = await stream.done();
  const image = await checkFalImages(result, "done()");
  assert(events.length >= 2, `${events.length} event(s): no progress before the result`);
  assert(
    JSON.stringify(events.at(-1)) === JSON.stringify(result),
    `the last event is not the result: ${JSON.stringify(events.at(-1)).slice(0, 300)}`,
  );
  // A progress event may carry a preview of the forming image: it must be an image too.
  const previews = events.slice(0, -1).filter((event) => event.images?.length);
  for (const [n, event] of previews.entries()) await checkImage(event.images[0].url, `preview ${n}`);
  return `${image}; ${events.length - 1} progress event(s), ${previews.length} with a preview, before the result`;
});

check("fal.storage.upload", async () => {
  const png = makePng();
  const url = await fal.storage.upload(new Blob([png], { type: "image/png" }));
  const stored = await imageBytes(url, "uploaded file");
  assert(stored.equals(png), `${url} holds ${stored.length} bytes, not the ${png.length} uploaded`);
  // The URL is an image input like any other.
  const edited = await fal.run("fal-ai/hidream-e1-full", {
    input: { image_url: url, edit_instruction: "make it blue", num_inference_steps: 2, seed: 1 },
  });
  return `${png.length} bytes round-tripped; edit of it: ${await checkFalImages(edited.data, "edit")}`;
});

check("fal.queue", async () => {
  const { request_id: requestId } = await fal.queue.submit(I1, { input: I1_INPUT });
  const deadline = Date.now() + CHECK_TIMEOUT_MS;
  let status = await fal.queue.status(I1, { requestId, logs: true });
  while (status.status !== "COMPLETED") {
    assert(Date.now() < deadline, `still ${status.status}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
    status = await fal.queue.status(I1, { requestId, logs: true });
  }
  const result = await fal.queue.result(I1, { requestId });
  assert(result.requestId === requestId, `result of ${result.requestId}, asked for ${requestId}`);
  const steps = status.logs.filter((line) => line.message.startsWith("step ")).length;
  assert(steps === I1_INPUT.num_inference_steps, `${steps} step lines in the log`);
  return `${await checkFalImages(result.data, "result")}; ${status.logs.length} log lines`;
});

check("openai.images.generate", async () => {
  const response = await openai.images.generate({
    model: "hidream-i1-full",
    prompt: "a red fox in snow",
    response_format: "b64_json",
    num_inference_steps: 2, // the server's extra inputs go in the body as they are
    seed: 7,
  });
  return checkImage(response.data[0].b64_json, "data[0].b64_json");
});

/** Iterates an OpenAI image stream: its partial images, then the completed image. */
async function checkOpenAIStream(stream, prefix) {
  const partials = [];
  let completed;
  for await (const event of stream) {
    if (event.type === `${prefix}.partial_image`) {
      assert(completed === undefined, "a partial image after the completed one");
      await checkImage(event.b64_json, `partial image ${event.partial_image_index}`);
      partials.push(event.partial_image_index);
    } else if (event.type === `${prefix}.completed`) {
      completed = event;
    } else {
      throw new Error(`unexpected event ${JSON.stringify(event).slice(0, 200)}`);
    }
  }
  assert(completed !== undefined, `no ${prefix}.completed event`);
  assert(partials.length >= 1, `no ${prefix}.partial_image before the result`);
  assert(partials.length <= 2, `${partials.length} partial images for partial_images: 2`);
  assert(partials.every((index, n) => index === n), `partial_image_index ${partials.join(",")}`);
  return `${await checkImage(completed.b64_json, "completed")}; ${partials.length} partial image(s) before it`;
}

check("openai.images.generate.stream", async () => {
  const stream = await openai.images.generate({
    model: "hidream-i1-full",
    prompt: "a red fox in snow",
    stream: true,
    partial_images: 2,
    num_inference_steps: STREAMED_STEPS,
    seed: 7,
  });
  return checkOpenAIStream(stream, "image_generation");
});

check("openai.images.edit", async () => {
  const response = await openai.images.edit({
    model: "hidream-e1-full",
    image: await toFile(makePng(), "input.png", { type: "image/png" }),
    prompt: "make it blue",
    response_format: "b64_json",
    num_inference_steps: 2,
  });
  return checkImage(response.data[0].b64_json, "data[0].b64_json");
});

check("openai.images.edit.stream", async () => {
  const stream = await openai.images.edit({
    model: "hidream-e1-full",
    image: await toFile(makePng(), "input.png", { type: "image/png" }),
    prompt: "make it blue",
    stream: true,
    partial_images: 2,
    num_inference_steps: STREAMED_STEPS,
  });
  return checkOpenAIStream(stream, "image_edit");
});

/** A Replicate output item: a URL string, or a FileOutput (https and data URIs). */
const outputUrl = (item) => (typeof item === "string" ? item : String(item.url()));

check("replicate.run", async () => {
  const output = await replicate.run("hidream-ai/hidream-i1-dev", {
    input: { prompt: "a red fox in snow", num_inference_steps: 2, seed: 7, output_format: "png" },
  });
  return checkImage(outputUrl(output[0]), "output[0]");
});

check("replicate.models.get", async () => {
  const model = await replicate.models.get("hidream-ai", "hidream-i1-dev");
  assert(model.owner === "hidream-ai" && model.name === "hidream-i1-dev", `got ${model.owner}/${model.name}`);
  assert(typeof model.latest_version?.id === "string", `no latest_version.id: ${JSON.stringify(model).slice(0, 300)}`);
  return `latest version ${model.latest_version.id}`;
});

check("replicate.run.version", async () => {
  const model = await replicate.models.get("hidream-ai", "hidream-i1-dev");
  const ref = `hidream-ai/hidream-i1-dev:${model.latest_version?.id}`;
  const output = await replicate.run(ref, {
    input: { prompt: "a red fox in snow", num_inference_steps: 2, seed: 7, output_format: "png" },
  });
  return `${ref}: ${await checkImage(outputUrl(output[0]), "output[0]")}`;
});

check("replicate.stream", async () => {
  const events = [];
  for await (const event of replicate.stream(NOOP, { input: NOOP_INPUT })) events.push(event);
  assert(events.at(-1)?.event === "done", `the stream ended on ${events.at(-1)?.event}, not done`);
  const outputs = events.filter((event) => event.event === "output");
  assert(outputs.length >= 1, `no output event among ${events.map((event) => event.event).join(",")}`);
  const result = outputs.at(-1);
  const before = events.indexOf(result);
  assert(before >= 1, `no progress event before the output: ${events.map((event) => event.event).join(",")}`);
  const images = [];
  for (const [n, event] of outputs.entries()) images.push(await checkImage(outputUrl(event.data), `output ${n}`));
  return `${images.at(-1)}; events ${events.map((event) => event.event).join(",")}`;
});

check("wavespeed.run", async () => {
  const result = await wavespeed.run(
    "wavespeed-ai/hidream-i1-fast",
    { prompt: "a red fox in snow", num_inference_steps: 2, seed: 7, size: "1024*1024", output_format: "png" },
    { pollInterval: 0.1 },
  );
  return checkImage(result.outputs[0], "outputs[0]");
});

// The README's snippets, run as written but for the server's address: each one must end without
// throwing (they index into what the calls return, so a missing image fails them).
const HERE = path.dirname(fileURLToPath(import.meta.url));
const README_SECTION = "### JavaScript clients";
const README_SERVER = "http://localhost:8000";
const snippetDir = mkdtempSync(path.join(tmpdir(), "readme-js-"));
symlinkSync(path.join(HERE, "node_modules"), path.join(snippetDir, "node_modules"), "dir");
const readme = readFileSync(path.join(HERE, "..", "..", "README.md"), "utf8");
const section = readme.split(`\n${README_SECTION}\n`)[1]?.split("\n### ")[0] ?? "";
for (const [n, [, code]] of [...section.matchAll(/```js\n([\s\S]*?)```/g)].entries()) {
  const client = code.match(/from "([^"]+)"/)?.[1] ?? `snippet ${n}`;
  check(`readme.${client}`, async () => {
    const file = path.join(snippetDir, `snippet-${n}.mjs`);
    writeFileSync(file, code.replaceAll(README_SERVER, SERVER));
    await import(pathToFileURL(file).href);
    return `${code.trim().split("\n").length} lines ran`;
  });
}

// -- Running them ------------------------------------------------------------------------------

// What the snippets print goes to stderr: stdout carries the report alone.
console.log = console.error;

const UNHANDLED = "process.no_unhandled_errors";
const unhandled = [];
let running = null;

function describe(error) {
  if (!(error instanceof Error)) return String(error);
  const status = error.status ?? error.response?.status;
  const body = error.body ?? error.error;
  const extra = [status && `status ${status}`, body && JSON.stringify(body)].filter(Boolean).join(", ");
  return `${error.name}: ${error.message}${extra ? ` (${extra})` : ""}`.slice(0, 800);
}

process.on("unhandledRejection", (reason) => unhandled.push(`during ${running ?? "no check"}: ${describe(reason)}`));
process.on("uncaughtException", (error) => unhandled.push(`during ${running ?? "no check"}: ${describe(error)}`));

async function withTimeout(promise, ms) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms / 1000} s`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

const report = { server: SERVER, checks: {}, details: {} };
for (const { name, run } of checks) {
  if (only.length > 0 && !only.some((part) => name.includes(part))) continue;
  running = name;
  const started = performance.now();
  try {
    report.details[name] = await withTimeout(run(), CHECK_TIMEOUT_MS);
    report.checks[name] = "ok";
  } catch (error) {
    report.checks[name] = describe(error);
  }
  console.error(`${name}: ${report.checks[name]} (${((performance.now() - started) / 1000).toFixed(2)} s)`);
}
running = null;
await new Promise((resolve) => setTimeout(resolve, 50)); // let a late rejection surface
report.checks[UNHANDLED] = unhandled.length === 0 ? "ok" : unhandled.join("; ");

rmSync(snippetDir, { recursive: true, force: true });
process.stdout.write(`${JSON.stringify(report)}\n`);
const failed = Object.values(report.checks).some((outcome) => outcome !== "ok");
process.exit(failed ? 1 : 0); // exit even if a stream left hanging still holds the event loop
