// Validates Argo objects with the validators @kubernetes-models generates from the Argo CRDs (types, required
// fields, enums, patterns). Reads a JSON list of objects from the file named by argv[2]; prints a JSON list with
// one entry per object: null when valid, else the error message. Unknown fields are caught by tsc (check.ts).
import { readFileSync } from "node:fs";
import { Application, AppProject } from "@kubernetes-models/argo-cd/argoproj.io/v1alpha1";
import { CronWorkflow, Workflow, WorkflowTemplate } from "@kubernetes-models/argo-workflows/argoproj.io/v1alpha1";

const models = { Application, AppProject, CronWorkflow, Workflow, WorkflowTemplate };
const objects = JSON.parse(readFileSync(process.argv[2], "utf8"));
const results = objects.map((object) => {
  const Model = models[object.kind];
  if (Model === undefined) {
    return `no model for kind ${object.kind}`;
  }
  try {
    new Model(object).validate();
    return null;
  } catch (error) {
    return String(error.message);
  }
});
process.stdout.write(JSON.stringify(results));
