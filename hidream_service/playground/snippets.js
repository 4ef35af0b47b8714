// The request on screen as code: curl against the fal queue API, fal-client, and the openai package.
// Keys are never written into a snippet; each reads HIDREAM_KEY from the environment.

// fal's image_size presets in pixels (models/hidream_i1.py IMAGE_SIZE_PRESETS), for OpenAI's `size`.
const SIZE_PRESETS = {
  square_hd: [1024, 1024],
  square: [512, 512],
  portrait_4_3: [768, 1024],
  portrait_16_9: [576, 1024],
  landscape_4_3: [1024, 768],
  landscape_16_9: [1024, 576],
};
// Inputs the OpenAI dialect takes through `extra_body` (dialects/openai/__init__.py, GenerationRequest).
const OPENAI_EXTRA = ["seed", "negative_prompt", "num_inference_steps", "guidance_scale"];

function shellQuote(text) {
  return `'${text.replace(/'/g, "'\\''")}'`;
}

/** A JSON value as a Python literal. */
export function python(value, indent = "") {
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number" || typeof value === "string") return JSON.stringify(value);
  const inner = `${indent}    `;
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return `[\n${value.map((item) => `${inner}${python(item, inner)},`).join("\n")}\n${indent}]`;
  }
  const entries = Object.entries(value);
  if (!entries.length) return "{}";
  return `{\n${entries.map(([key, item]) => `${inner}${JSON.stringify(key)}: ${python(item, inner)},`).join("\n")}\n${indent}}`;
}

function curl(base, model, input, webhook) {
  const query = webhook ? `?fal_webhook=${encodeURIComponent(webhook)}` : "";
  return [
    `# queue the request; the answer names its status_url, response_url and cancel_url`,
    `curl -s -X POST ${shellQuote(`${base}/${model.id}${query}`)} \\`,
    `  -H "Authorization: Key $HIDREAM_KEY" \\`,
    `  -H 'Content-Type: application/json' \\`,
    `  -d ${shellQuote(JSON.stringify(input, null, 2))}`,
    ``,
    `# then follow it as server-sent events, and fetch the result`,
    `curl -sN "${base}/${model.id.split("/").slice(0, 2).join("/")}/requests/$REQUEST_ID/status/stream?logs=1" \\`,
    `  -H "Authorization: Key $HIDREAM_KEY"`,
  ].join("\n");
}

function falClient(base, model, input, webhook) {
  const lines = [
    "import os",
    "",
    "import fal_client",
    "import fal_client.client",
    "",
    "# fal-client has no base-URL option: point its module-level hosts at this server.",
    `fal_client.client.QUEUE_URL_FORMAT = ${JSON.stringify(`${base}/`)}`,
    `fal_client.client.RUN_URL_FORMAT = ${JSON.stringify(`${base}/run/`)}`,
  ];
  if ((model.image_fields || []).length) {
    // client.upload_file(path) then gives a URL for an image input.
    lines.push(`fal_client.client.REST_URL = fal_client.client.CDN_URL = ${JSON.stringify(base)}`);
  }
  lines.push("", 'client = fal_client.SyncClient(key=os.environ["HIDREAM_KEY"])');
  if (webhook) {
    return [
      ...lines,
      "handle = client.submit(",
      `    ${JSON.stringify(model.id)},`,
      `    arguments=${python(input, "    ")},`,
      `    webhook_url=${JSON.stringify(webhook)},`,
      ")",
      "print(handle.request_id)  # the result arrives at the webhook",
    ].join("\n");
  }
  return [
    ...lines,
    "result = client.subscribe(",
    `    ${JSON.stringify(model.id)},`,
    `    arguments=${python(input, "    ")},`,
    "    with_logs=True,",
    "    on_queue_update=print,",
    ")",
    'print(result["images"][0]["url"], result["seed"])',
  ].join("\n");
}

function openai(base, model, input) {
  const name = model.names && model.names.openai;
  if (!name) {
    return `# ${model.id} has no OpenAI Images model name on this server: use curl or fal-client.`;
  }
  const editing = (model.image_fields || []).length > 0;
  const prompt = input.prompt ?? input.edit_instruction ?? "";
  const args = [`    model=${JSON.stringify(name)},`, `    prompt=${JSON.stringify(prompt)},`];
  if (editing) {
    const several = model.image_fields.some((field) => field.multiple);
    args.push(several ? "    image=[open(path, \"rb\") for path in IMAGES]," : "    image=open(IMAGES[0], \"rb\"),");
  }
  if (input.num_images) args.push(`    n=${input.num_images},`);
  const size = input.image_size;
  const pixels = size && typeof size === "object" ? [size.width, size.height] : SIZE_PRESETS[size];
  if (pixels && !("edit_instruction" in input)) args.push(`    size=${JSON.stringify(`${pixels[0]}x${pixels[1]}`)},`);
  if (input.output_format) args.push(`    output_format=${JSON.stringify(input.output_format)},`);
  const extra = Object.fromEntries(OPENAI_EXTRA.filter((key) => key in input).map((key) => [key, input[key]]));
  if (Object.keys(extra).length) args.push(`    extra_body=${python(extra, "    ")},`);
  return [
    "import os",
    "",
    "import openai",
    "",
    `client = openai.OpenAI(api_key=os.environ["HIDREAM_KEY"], base_url=${JSON.stringify(`${base}/v1`)})`,
    ...(editing ? ["IMAGES = [\"image.png\"]  # your image file(s)"] : []),
    `image = client.images.${editing ? "edit" : "generate"}(`,
    ...args,
    ")",
    "print(image.data[0].url)",
  ].join("\n");
}

export function snippet(kind, base, model, input, webhook) {
  if (kind === "fal") return falClient(base, model, input, webhook);
  if (kind === "openai") return openai(base, model, input);
  return curl(base, model, input, webhook);
}
