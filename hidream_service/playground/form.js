// A form for one endpoint, generated from its input JSON Schema (GET /models) and its defaults.
//
// Each property becomes a control by what its schema says: enums and `^(a|b)$` patterns are
// selects, a preset-or-{width, height} choice is a select with a "custom" pair of inputs, bounded
// numbers get a slider beside the box, and the catalogue's `image_fields` get a URL box with an
// upload button (the file goes through fal's upload API and its URL into the field).

import { uploadFile } from "./api.js";
import { element } from "./dom.js";

// Shown under "More options": tuning most requests leave alone.
const ADVANCED = new Set(["negative_prompt", "enable_safety_checker", "output_format", "sync_mode", "fail_with", "loras"]);
const LABELS = {
  num_inference_steps: "Steps",
  num_images: "Number of images",
  num_steps: "Steps",
  image_size: "Image size",
  enable_safety_checker: "Safety checker",
  sync_mode: "Sync mode (data URIs)",
  step_seconds: "Seconds per step",
};
const CUSTOM = "__custom__";

function labelFor(name) {
  if (LABELS[name]) return LABELS[name];
  const words = name.replace(/_urls?$/, (suffix) => (suffix === "_urls" ? " URLs" : " URL")).replace(/_/g, " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

function resolve(schema, defs) {
  let resolved = schema || {};
  for (let depth = 0; resolved.$ref && depth < 10; depth += 1) {
    resolved = { ...defs[resolved.$ref.replace("#/$defs/", "")], ...resolved, $ref: undefined };
  }
  return resolved;
}

/** The property's shape with `| None` taken off: {schema, nullable, options}. */
function unwrap(schema, defs) {
  const resolved = resolve(schema, defs);
  if (!Array.isArray(resolved.anyOf)) return { schema: resolved, nullable: false, options: [] };
  const options = resolved.anyOf.map((option) => resolve(option, defs));
  const rest = options.filter((option) => option.type !== "null");
  const nullable = rest.length < options.length;
  const base = { ...resolved, anyOf: undefined };
  if (rest.length === 1) return { schema: { ...base, ...rest[0] }, nullable, options: [] };
  return { schema: base, nullable, options: rest };
}

function patternChoices(pattern) {
  const match = /^\^\(([\w|-]+)\)\$$/.exec(pattern || "");
  return match ? match[1].split("|") : null;
}

function same(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

function fieldShell(name, schema, required) {
  const label = element("span", { className: "label" }, labelFor(name), " ", element("code", {}, name));
  if (required) label.append(element("span", { className: "required", title: "required" }, "*"));
  const wrapper = element("div", { className: "field", dataset: { field: name } }, label);
  const help = schema.description ? element("span", { className: "help" }, schema.description) : null;
  const error = element("span", { className: "field-error", hidden: true });
  return { wrapper, help, error };
}

function finish(shell, control) {
  shell.wrapper.append(control);
  if (shell.help) shell.wrapper.append(shell.help);
  shell.wrapper.append(shell.error);
  return shell.wrapper;
}

function numberControl(name, schema, nullable, onChange) {
  const integer = schema.type === "integer";
  const min = schema.minimum ?? (schema.exclusiveMinimum !== undefined ? schema.exclusiveMinimum : undefined);
  const max = schema.maximum ?? schema.exclusiveMaximum;
  const box = element("input", { type: "number", id: `field-${name}`, name, inputMode: integer ? "numeric" : "decimal" });
  if (min !== undefined) box.min = String(min);
  if (max !== undefined) box.max = String(max);
  box.step = integer ? "1" : schema.multipleOf ? String(schema.multipleOf) : "0.1";
  if (nullable) box.placeholder = "random";
  const sliderFits = min !== undefined && max !== undefined && max - min <= 1000 && name !== "seed";
  let slider = null;
  if (sliderFits) {
    slider = element("input", { type: "range", min: String(min), max: String(max), step: box.step, tabIndex: -1 });
    slider.setAttribute("aria-label", `${labelFor(name)} slider`);
    slider.addEventListener("input", () => {
      box.value = slider.value;
      onChange();
    });
    box.addEventListener("input", () => {
      if (box.value !== "") slider.value = box.value;
    });
  }
  box.addEventListener("input", onChange);
  const control = slider ? element("div", { className: "number-pair" }, slider, box) : box;
  return {
    control,
    read: () => {
      if (box.value.trim() === "") return undefined;
      const value = Number(box.value);
      return Number.isNaN(value) ? box.value : value;
    },
    write: (value) => {
      box.value = value === null || value === undefined ? "" : String(value);
      if (slider && box.value !== "") slider.value = box.value;
    },
  };
}

function selectControl(name, choices, onChange) {
  const select = element("select", { id: `field-${name}`, name });
  for (const choice of choices) select.append(element("option", { value: String(choice) }, String(choice)));
  select.addEventListener("change", onChange);
  return { control: select, read: () => select.value, write: (value) => (select.value = String(value ?? "")) };
}

/** A preset name or a custom object (fal's image_size): a select plus the object's number inputs. */
function presetOrObjectControl(name, presets, objectSchema, defs, onChange) {
  const select = element("select", { id: `field-${name}`, name });
  for (const preset of presets) select.append(element("option", { value: preset }, preset));
  select.append(element("option", { value: CUSTOM }, "custom…"));
  const parts = Object.entries(objectSchema.properties || {}).map(([part, partSchema]) => {
    const number = numberControl(`${name}-${part}`, resolve(partSchema, defs), false, onChange);
    return { part, number, box: element("label", { className: "inline" }, part, number.control) };
  });
  const custom = element("div", { className: "custom-size", hidden: true }, ...parts.map((p) => p.box));
  const sync = () => {
    custom.hidden = select.value !== CUSTOM;
  };
  select.addEventListener("change", () => {
    sync();
    onChange();
  });
  return {
    control: element("div", {}, select, custom),
    read: () => {
      if (select.value !== CUSTOM) return select.value;
      return Object.fromEntries(parts.map(({ part, number }) => [part, number.read()]));
    },
    write: (value) => {
      if (value && typeof value === "object") {
        select.value = CUSTOM;
        for (const { part, number } of parts) number.write(value[part]);
      } else {
        select.value = String(value ?? presets[0]);
        for (const { number } of parts) number.write(1024);
      }
      sync();
    },
  };
}

function imageControl(name, multiple, onChange, reportError) {
  const text = multiple
    ? element("textarea", { id: `field-${name}`, name, rows: 2, placeholder: "One image URL per line" })
    : element("input", { id: `field-${name}`, name, type: "text", placeholder: "https://… or upload a file" });
  const picker = element("input", { type: "file", accept: "image/*", multiple, hidden: true });
  const button = element("button", { type: "button", className: "button ghost small" }, "Upload…");
  const status = element("span", { className: "help" });
  const preview = element("div", { className: "thumbs" });
  const urls = () => text.value.split("\n").map((line) => line.trim()).filter(Boolean);
  // Thumbnails only for files on this server (and data URIs): the page loads nothing from elsewhere.
  const local = (url) => url.startsWith("data:") || new URL(url, location.href).origin === location.origin;
  const showPreview = () => {
    const shown = urls().filter((url) => URL.canParse(url, location.href) && local(url));
    preview.replaceChildren(...shown.map((url) => element("img", { src: url, alt: "", className: "thumb" })));
  };
  const upload = async (files) => {
    reportError("");
    for (const file of files) {
      status.textContent = `uploading ${file.name}…`;
      try {
        const url = await uploadFile(file);
        text.value = multiple ? [...urls(), url].join("\n") : url;
      } catch (error) {
        reportError(`upload failed: ${error.message}`);
      }
    }
    status.textContent = "";
    showPreview();
    onChange();
  };
  button.addEventListener("click", () => picker.click());
  picker.addEventListener("change", () => upload([...picker.files]));
  text.addEventListener("input", onChange);
  text.addEventListener("change", showPreview);
  const zone = element("div", { className: "image-input" }, element("div", { className: "row" }, text, button), status, preview, picker);
  zone.addEventListener("dragover", (event) => event.preventDefault());
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    upload([...event.dataTransfer.files].filter((file) => file.type.startsWith("image/")));
  });
  return {
    control: zone,
    read: () => (multiple ? (urls().length ? urls() : undefined) : urls()[0]),
    write: (value) => {
      text.value = Array.isArray(value) ? value.join("\n") : value || "";
      showPreview();
    },
  };
}

function textControl(name, schema, onChange) {
  const long = name.includes("prompt") || (schema.maxLength || 0) > 1000;
  const box = long
    ? element("textarea", { id: `field-${name}`, name, rows: name === "prompt" ? 4 : 2 })
    : element("input", { id: `field-${name}`, name, type: "text" });
  if (schema.maxLength) box.maxLength = schema.maxLength;
  box.addEventListener("input", onChange);
  return { control: box, read: () => (box.value === "" ? undefined : box.value), write: (value) => (box.value = value ?? "") };
}

function checkboxControl(name, onChange) {
  const box = element("input", { type: "checkbox", id: `field-${name}`, name });
  box.addEventListener("change", onChange);
  return { control: element("label", { className: "check" }, box, "on"), read: () => box.checked, write: (value) => (box.checked = Boolean(value)) };
}

function jsonControl(name, onChange) {
  const box = element("textarea", { id: `field-${name}`, name, rows: 3, className: "mono", placeholder: "JSON" });
  box.addEventListener("input", onChange);
  return {
    control: box,
    read: () => {
      if (box.value.trim() === "") return undefined;
      try {
        return JSON.parse(box.value);
      } catch {
        return box.value; // sent as is: the server's 422 says what is wrong
      }
    },
    write: (value) => (box.value = value === undefined || value === null ? "" : JSON.stringify(value)),
  };
}

function controlFor(name, property, defs, imageField, onChange, reportError) {
  if (imageField) return imageControl(name, imageField.multiple, onChange, reportError);
  const { schema, nullable, options } = unwrap(property, defs);
  const presets = options.find((option) => Array.isArray(option.enum));
  const object = options.find((option) => option.type === "object");
  if (presets && object && options.length === 2) return presetOrObjectControl(name, presets.enum, object, defs, onChange);
  if (Array.isArray(schema.enum)) return selectControl(name, schema.enum, onChange);
  const choices = schema.type === "string" ? patternChoices(schema.pattern) : null;
  if (choices) return selectControl(name, choices, onChange);
  if (schema.type === "integer" || schema.type === "number") return numberControl(name, schema, nullable, onChange);
  if (schema.type === "boolean") return checkboxControl(name, onChange);
  if (schema.type === "string") return textControl(name, schema, onChange);
  return jsonControl(name, onChange);
}

/**
 * Build the form of `model` into the two containers. Returns {values, reset, showErrors, clearErrors}:
 * `values()` holds the required fields and those that differ from the endpoint's defaults.
 */
export function buildForm(model, main, advanced, onChange) {
  const schema = model.input_schema || {};
  const defs = schema.$defs || {};
  const required = new Set(schema.required || []);
  const images = new Map((model.image_fields || []).map((field) => [field.name, field]));
  const fields = [];
  main.replaceChildren();
  advanced.replaceChildren();
  for (const [name, property] of Object.entries(schema.properties || {})) {
    const shell = fieldShell(name, unwrap(property, defs).schema, required.has(name));
    const setError = (message) => {
      shell.error.textContent = message;
      shell.error.hidden = !message;
      shell.wrapper.classList.toggle("invalid", Boolean(message));
    };
    const control = controlFor(name, property, defs, images.get(name), onChange, setError);
    const fallback = unwrap(property, defs).schema.default;
    const initial = name in (model.defaults || {}) ? model.defaults[name] : fallback;
    const container = ADVANCED.has(name) && !required.has(name) ? advanced : main;
    container.append(finish(shell, control.control));
    fields.push({ name, control, initial, required: required.has(name), setError });
  }
  const reset = () => {
    for (const field of fields) {
      field.control.write(field.initial);
      field.setError("");
    }
  };
  reset();
  return {
    values() {
      const values = {};
      for (const field of fields) {
        const value = field.control.read();
        if (value === undefined) continue;
        if (field.required || !same(value, field.initial)) values[field.name] = value;
      }
      return values;
    },
    reset,
    clearErrors() {
      for (const field of fields) field.setError("");
    },
    /** Put each of fal's 422 `detail` items beside its field; returns the messages no field took. */
    showErrors(detail) {
      const unplaced = [];
      for (const item of detail) {
        const loc = (item.loc || []).filter((part) => part !== "body");
        const field = fields.find((candidate) => candidate.name === loc[0]);
        if (field) field.setError(item.msg);
        else unplaced.push(loc.length ? `${loc.join(".")}: ${item.msg}` : item.msg);
      }
      return unplaced;
    },
  };
}
