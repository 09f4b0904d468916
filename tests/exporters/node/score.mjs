// Score users with exported ONNX models in onnxruntime-node and print the outputs as JSON.
// Usage: node score.mjs <export dir> <users.bin (float32 LE, row-major)> <n users> <model name>...
// Model paths and the feature count come from the export's manifest.json, as a JS service
// would read them (JS runtimes cannot read ONNX metadata_props).
import { readFileSync } from "node:fs";
import { join } from "node:path";
import ort from "onnxruntime-node";

const [exportDir, usersPath, nUsersText, ...modelNames] = process.argv.slice(2);
const manifest = JSON.parse(readFileSync(join(exportDir, "manifest.json"), "utf8"));
const nUsers = Number(nUsersText);
const nFeatures = manifest.feature_names.length;
const raw = readFileSync(usersPath);
const users = new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
if (users.length !== nUsers * nFeatures) {
  throw new Error(`expected ${nUsers * nFeatures} floats in ${usersPath}, got ${users.length}`);
}
const input = new ort.Tensor("float32", users, [nUsers, nFeatures]);

const results = {};
for (const name of modelNames) {
  const entry = manifest.models[name];
  if (!entry) throw new Error(`model ${name} is not in the manifest`);
  const session = await ort.InferenceSession.create(join(exportDir, entry.path));
  const outputs = await session.run({ [session.inputNames[0]]: input });
  results[name] = {};
  for (const [key, tensor] of Object.entries(outputs)) {
    results[name][key] = { type: tensor.type, dims: tensor.dims, data: Array.from(tensor.data, Number) };
  }
}
process.stdout.write(JSON.stringify({ versions: ort.env.versions ?? null, results }));
