// Runs one ONNX model in onnxruntime-node or onnxruntime-web (wasm backend, one thread) and
// prints its outputs as JSON, so tests/portability/test_portability.py can compare them with
// onnxruntime in Python and the ONNX reference evaluator.
//
//   node run_model.mjs node|web MODEL.onnx INPUTS.json   -> {"name": {"dtype", "dims", "data"}, ...}
//   node run_model.mjs versions                           -> {"onnxruntime-node": "x.y.z", ...}
//
// INPUTS.json: {"name": {"dtype": "float32", "shape": [N, F], "data": [...]}, ...}, data flat in
// row-major order. Floats that JSON cannot hold are written as the strings "NaN", "Infinity" and
// "-Infinity", both ways; int64 values travel as JSON numbers (strings where beyond 2**53).

import { readFileSync } from "node:fs";

const ARRAYS = {
  float32: Float32Array,
  float64: Float64Array,
  int8: Int8Array,
  uint8: Uint8Array,
  int16: Int16Array,
  uint16: Uint16Array,
  int32: Int32Array,
  uint32: Uint32Array,
  int64: BigInt64Array,
  uint64: BigUint64Array,
  bool: Uint8Array,
};

function usage(message) {
  process.stderr.write(`error: ${message}\nusage: node run_model.mjs node|web MODEL.onnx INPUTS.json | versions\n`);
  process.exit(2);
}

async function load(backend) {
  if (backend === "node") {
    return { ort: await import("onnxruntime-node"), providers: ["cpu"] };
  }
  if (backend === "web") {
    const ort = await import("onnxruntime-web");
    ort.env.wasm.numThreads = 1; // no worker threads under Node
    ort.env.wasm.proxy = false;
    return { ort, providers: ["wasm"] };
  }
  return usage(`unknown backend ${JSON.stringify(backend)}`);
}

function toTensor(ort, name, spec) {
  const { dtype, shape, data } = spec;
  if (!Array.isArray(shape) || !Array.isArray(data)) {
    throw new Error(`input ${name}: "shape" and "data" must be lists`);
  }
  const count = shape.reduce((a, b) => a * b, 1);
  if (count !== data.length) {
    throw new Error(`input ${name}: shape ${JSON.stringify(shape)} holds ${count} values, data has ${data.length}`);
  }
  if (dtype === "string") {
    return new ort.Tensor("string", data.map(String), shape);
  }
  const Array_ = ARRAYS[dtype];
  if (Array_ === undefined) {
    throw new Error(`input ${name}: unsupported dtype ${dtype}`);
  }
  let values;
  if (dtype === "int64" || dtype === "uint64") {
    values = Array_.from(data, (v) => BigInt(v));
  } else if (dtype === "bool") {
    values = Array_.from(data, (v) => (v ? 1 : 0));
  } else {
    values = Array_.from(data, (v) => Number(v));
  }
  return new ort.Tensor(dtype, values, shape);
}

function jsonValue(value) {
  if (typeof value === "bigint") {
    return Number.isSafeInteger(Number(value)) ? Number(value) : value.toString();
  }
  if (typeof value === "number" && !Number.isFinite(value)) {
    return String(value); // "NaN", "Infinity", "-Infinity"
  }
  return value;
}

function fromTensor(tensor) {
  const data = Array.from(tensor.data, jsonValue);
  return { dtype: tensor.type, dims: Array.from(tensor.dims), data };
}

async function run(backend, modelPath, inputsPath) {
  const { ort, providers } = await load(backend);
  const inputs = JSON.parse(readFileSync(inputsPath, "utf8"));
  // Bytes rather than a path: the same call works in onnxruntime-node and onnxruntime-web.
  const session = await ort.InferenceSession.create(new Uint8Array(readFileSync(modelPath)), {
    executionProviders: providers,
    logSeverityLevel: 3,
  });
  const feeds = {};
  for (const [name, spec] of Object.entries(inputs)) {
    feeds[name] = toTensor(ort, name, spec);
  }
  const results = await session.run(feeds);
  const out = {};
  for (const name of session.outputNames) {
    out[name] = fromTensor(results[name]);
  }
  await session.release();
  return out;
}

async function versions() {
  // What the runtimes report about themselves once loaded, not what package.json asked for.
  const node = (await load("node")).ort.env.versions;
  const web = (await load("web")).ort.env.versions;
  return {
    node: process.versions.node,
    "onnxruntime-node": node.node,
    "onnxruntime-web": web.web,
    "onnxruntime-common": node.common,
  };
}

const [backend, modelPath, inputsPath] = process.argv.slice(2);
try {
  let result;
  if (backend === "versions") {
    result = await versions();
  } else {
    if (!modelPath || !inputsPath) {
      usage("a backend, a model and an inputs file are needed");
    }
    result = await run(backend, modelPath, inputsPath);
  }
  process.stdout.write(`${JSON.stringify(result)}\n`);
} catch (error) {
  process.stderr.write(`error: ${error && error.stack ? error.stack : error}\n`);
  process.exit(1);
}
