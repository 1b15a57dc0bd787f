// Code written against the TypeScript types that openapi-typescript generates from the server's /openapi.json
// (api.d.ts, beside this file: `npm run generate`), compiled with `tsc --strict --noEmit` (`npm run check`; the
// test suite does both in tests/client/test_generated_clients.py). It stops compiling when the contract changes
// shape: a Problem, its errors, a job and a prediction as clients read them.
import type { components, operations } from "./api";

export type Problem = components["schemas"]["Problem"];
export type ProblemError = components["schemas"]["ProblemError"];
export type Job = components["schemas"]["JobRead"];
export type PredictResponse = components["schemas"]["PredictResponse"];

/** One line for a log: what went wrong, where, and the id to quote. */
export function describeProblem(problem: Problem): string {
  const where = problem.errors.map((error: ProblemError) => {
    const at = error.field ?? error.column ?? "body";
    const record = typeof error.record === "number" ? ` (record ${error.record})` : "";
    return `${at}${record}: ${error.message}`;
  });
  const id = problem.request_id === null ? "" : ` [request ${problem.request_id}]`;
  return `${problem.status} ${problem.title}: ${problem.detail}${where.length ? ` (${where.join("; ")})` : ""}${id}`;
}

export function describeJob(job: Job): string {
  const model = job.status === "succeeded" && job.model_id !== null ? `, model ${job.model_id}` : "";
  return `${job.id} ${job.status}: epoch ${job.progress.epoch} of ${job.progress.epochs}${model}`;
}

/** The most probable class of one record, for a classifier's answer. */
export function mostProbable(answer: PredictResponse, record: number): string | undefined {
  const probabilities = answer.probabilities?.[record];
  let best: string | undefined;
  for (const label in probabilities) {
    if (best === undefined || probabilities[label] > probabilities[best]) {
      best = label;
    }
  }
  return best;
}

const invalid: Problem = {
  type: "/problems/invalid-input",
  title: "Invalid input",
  status: 422,
  detail: "training.optimiser: unknown field; did you mean 'optimizer'?",
  errors: [{ field: "training.optimiser", message: "unknown field; did you mean 'optimizer'?" }],
  request_id: "0123456789abcdef",
};

// Error answers are the one Problem, as application/problem+json, whichever operation sends them.
export const answers: [
  operations["submit_job"]["responses"][422]["content"]["application/problem+json"],
  operations["predict_records"]["responses"][404]["content"]["application/problem+json"],
  operations["upload_dataset"]["responses"][413]["content"]["application/problem+json"],
] = [invalid, { ...invalid, status: 404, errors: [] }, { ...invalid, status: 413, errors: [] }];

// The types are precise, not `any`: each of these must fail to compile.
// @ts-expect-error: a status is a number
export const textStatus: Problem = { ...invalid, status: "422" };
// @ts-expect-error: an entry of errors says what is wrong
export const noMessage: ProblemError = { field: "target" };
// @ts-expect-error: a job's progress counts epochs, nothing else
export const percent: number = ({} as Job).progress.percent;
// @ts-expect-error: predictions come per record, in a list
export const onePrediction: PredictResponse = { model_id: "mdl_0", predictions: "setosa", probabilities: null };
