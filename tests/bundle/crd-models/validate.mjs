// Validates custom resources with the validators @kubernetes-models generates from the upstream CRDs (types,
// required fields, enums, patterns). Reads a JSON list of {module, kind, object} from the file named by argv[2]
// (module: the package path of the model class); prints a JSON list with one entry per object: null when valid,
// else the error message. Unknown fields are caught by tsc (check.ts).
import { readFileSync } from "node:fs";

const entries = JSON.parse(readFileSync(process.argv[2], "utf8"));
const results = [];
for (const { module, kind, object } of entries) {
  try {
    const Model = (await import(module))[kind];
    new Model(object).validate();
    results.push(null);
  } catch (error) {
    results.push(String(error.message));
  }
}
process.stdout.write(JSON.stringify(results));
