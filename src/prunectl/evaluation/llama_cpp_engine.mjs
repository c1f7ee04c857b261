// prunectl's driver for node-llama-cpp's prebuilt CPU engine (llama.cpp without compiling).
// Reads one JSON request on stdin, writes one JSON answer on stdout:
//   {"model": FILE, "threads": N, "nll": [[ids...], ...]}       -> {"nll": [sum, ...], "tokens": [n, ...]}
//   {"model": FILE, "threads": N, "speed": {"prompt": [ids], "gen": G}}
//        -> {"prompt_s": wall, "prompt_cpu_s": cpu, "decode_s": wall, "decode_cpu_s": cpu}
// Negative log-likelihoods come from the raw logits of each next token: the logit of the token
// that follows, the maximum logit and the total logit weight sum(exp(logit - max)).
// Usage: node llama_cpp_engine.mjs FOLDER   (FOLDER: where node-llama-cpp was npm-installed)
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";

const installed = createRequire(pathToFileURL(process.argv[2] + "/").href);
const { getLlama, LlamaLogLevel } = await import(
  pathToFileURL(installed.resolve("node-llama-cpp")).href);

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const request = JSON.parse(Buffer.concat(chunks).toString());
const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath: request.model, gpuLayers: 0 });

function cpuSeconds() {
  const usage = process.cpuUsage();
  return (usage.user + usage.system) / 1e6;
}

async function context(size) {
  return model.createContext({ contextSize: size, batchSize: size, threads: request.threads,
                               sequences: 1 });
}

const answer = {};
if (request.nll) {
  const size = Math.max(...request.nll.map((w) => w.length));
  const ctx = await context(size);
  answer.nll = [];
  answer.tokens = [];
  const sequence = ctx.getSequence();
  for (const window of request.nll) {
    await sequence.clearHistory();  // each window starts from an empty context
    const input = window.map((token, i) => i + 1 < window.length
      ? [token, { generateNext: { logits: { filter: { tokens: [window[i + 1]], includeTop: 1 } },
                                  totalLogitWeight: true } }]
      : token);
    const out = await sequence.controlledEvaluate(input);
    let sum = 0;
    for (let i = 0; i + 1 < window.length; i++) {
      const next = out[i].next;
      const max = Math.max(...next.logits.values());  // the filter: next and the top one
      sum -= next.logits.get(window[i + 1]) - max - Math.log(next.totalLogitWeight);
    }
    answer.nll.push(sum);
    answer.tokens.push(window.length - 1);
  }
  await ctx.dispose();
}
if (request.speed) {
  const { prompt, gen } = request.speed;
  const ctx = await context(prompt.length + gen + 1);
  const sequence = ctx.getSequence();
  let wall = performance.now(), cpu = cpuSeconds();
  await sequence.controlledEvaluate(prompt.map((t, i) => i + 1 < prompt.length ? t
    : [t, { generateNext: { token: true, options: { temperature: 0 } } }]));
  answer.prompt_s = (performance.now() - wall) / 1e3;
  answer.prompt_cpu_s = cpuSeconds() - cpu;
  wall = performance.now();
  cpu = cpuSeconds();
  let token = prompt[0];
  for (let i = 0; i < gen; i++) {  // one token per step, as llama-bench's tg test
    await sequence.controlledEvaluate([[token, { generateNext: { token: true,
                                                                 options: { temperature: 0 } } }]]);
  }
  answer.decode_s = (performance.now() - wall) / 1e3;
  answer.decode_cpu_s = cpuSeconds() - cpu;
  await ctx.dispose();
}
await model.dispose();
process.stdout.write(JSON.stringify(answer));
process.exit(0);
