// prunectl-llama-logits: what llama.cpp itself computes for a GGUF file, as plain text.
//
// The opt-in test (tests/test_gguf_llama_cpp.py) compares these numbers with transformers'.
// It talks to libllama's C API directly (llama_batch_get_one + llama_decode), so no Python
// binding and no sampler settings sit between the engine and the comparison; the KV cache is
// f32 so that an f32 model is compared at f32 throughout.
//
//   prunectl-llama-logits MODEL.gguf logits N_STEPS TOKEN_ID...
//       line 1: the next-token logits after the prompt, space separated
//       line 2: N_STEPS greedy (arg-max) token ids, each fed back one at a time
//   prunectl-llama-logits MODEL.gguf tokenize TEXT
//       line 1: llama.cpp's token ids for TEXT (no BOS added, special tokens parsed)
//   prunectl-llama-logits MODEL.gguf speed N_PROMPT N_GEN REPS THREADS
//       line 1: prompt tokens/s and decode tokens/s, each the mean over REPS runs: llama-bench's
//       pp/tg tests (one batch of N_PROMPT tokens; N_GEN single-token steps), default settings
//
// Built by scripts/llama_cpp.sh against the cached llama.cpp build.
#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

static void print_floats(const float * values, int n) {
    for (int i = 0; i < n; ++i) {
        std::printf(i ? " %.9g" : "%.9g", values[i]);
    }
    std::printf("\n");
}

static llama_token arg_max(const float * values, int n) {
    int best = 0;
    for (int i = 1; i < n; ++i) {
        if (values[i] > values[best]) {
            best = i;
        }
    }
    return best;
}

static void quiet_log(ggml_log_level level, const char * text, void *) {
    if (level == GGML_LOG_LEVEL_ERROR) {
        std::fputs(text, stderr);
    }
}

static int run_logits(llama_model * model, int n_steps, std::vector<llama_token> tokens) {
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);

    llama_context_params params = llama_context_default_params();
    params.n_ctx = tokens.size() + n_steps + 8;
    params.n_batch = params.n_ctx;
    params.n_threads = 1;
    params.n_threads_batch = 1;
    params.type_k = GGML_TYPE_F32;  // the default f16 KV cache would round keys and values
    params.type_v = GGML_TYPE_F32;
    params.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;  // its CPU kernel accumulates in f16
    llama_context * ctx = llama_init_from_model(model, params);
    if (ctx == nullptr) {
        std::fprintf(stderr, "error: could not create a llama.cpp context\n");
        return 1;
    }
    if (llama_decode(ctx, llama_batch_get_one(tokens.data(), tokens.size())) != 0) {
        std::fprintf(stderr, "error: llama_decode failed on the prompt\n");
        return 1;
    }
    const float * logits = llama_get_logits_ith(ctx, -1);
    print_floats(logits, n_vocab);

    std::vector<llama_token> generated;
    for (int step = 0; step < n_steps; ++step) {
        llama_token next = arg_max(llama_get_logits_ith(ctx, -1), n_vocab);
        generated.push_back(next);
        if (llama_decode(ctx, llama_batch_get_one(&next, 1)) != 0) {
            std::fprintf(stderr, "error: llama_decode failed at step %d\n", step);
            return 1;
        }
    }
    for (size_t i = 0; i < generated.size(); ++i) {
        std::printf(i ? " %d" : "%d", generated[i]);
    }
    std::printf("\n");
    llama_free(ctx);
    return 0;
}

static double seconds_since(int64_t start_us) {
    return (ggml_time_us() - start_us) / 1e6;
}

static int run_speed(llama_model * model, int n_prompt, int n_gen, int reps, int threads) {
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    llama_context_params params = llama_context_default_params();
    params.n_ctx = n_prompt + n_gen;
    params.n_batch = n_prompt;
    params.n_threads = threads;
    params.n_threads_batch = threads;
    llama_context * ctx = llama_init_from_model(model, params);
    if (ctx == nullptr) {
        std::fprintf(stderr, "error: could not create a llama.cpp context\n");
        return 1;
    }
    std::vector<llama_token> prompt(n_prompt);
    for (int i = 0; i < n_prompt; ++i) {
        prompt[i] = (i * 7919) % n_vocab;  // any tokens: speed does not depend on them
    }
    double prompt_rate = 0, decode_rate = 0;
    for (int rep = 0; rep <= reps; ++rep) {  // rep 0 warms up, as llama-bench does
        llama_memory_clear(llama_get_memory(ctx), true);
        int64_t start = ggml_time_us();
        if (llama_decode(ctx, llama_batch_get_one(prompt.data(), n_prompt)) != 0) {
            return 1;
        }
        llama_synchronize(ctx);
        double pp = n_prompt / seconds_since(start);
        llama_memory_clear(llama_get_memory(ctx), true);
        llama_token token = prompt[0];
        start = ggml_time_us();
        for (int i = 0; i < n_gen; ++i) {
            if (llama_decode(ctx, llama_batch_get_one(&token, 1)) != 0) {
                return 1;
            }
            llama_synchronize(ctx);
        }
        double tg = n_gen / seconds_since(start);
        if (rep > 0) {
            prompt_rate += pp / reps;
            decode_rate += tg / reps;
        }
    }
    std::printf("%.3f %.3f\n", prompt_rate, decode_rate);
    llama_free(ctx);
    return 0;
}

static int run_tokenize(llama_model * model, const std::string & text) {
    const llama_vocab * vocab = llama_model_get_vocab(model);
    std::vector<llama_token> tokens(text.size() + 8);
    int n = llama_tokenize(vocab, text.c_str(), text.size(), tokens.data(), tokens.size(), false, true);
    if (n < 0) {
        std::fprintf(stderr, "error: llama_tokenize failed\n");
        return 1;
    }
    for (int i = 0; i < n; ++i) {
        std::printf(i ? " %d" : "%d", tokens[i]);
    }
    std::printf("\n");
    return 0;
}

int main(int argc, char ** argv) {
    if (argc < 4) {
        std::fprintf(stderr, "usage: %s MODEL.gguf logits N_STEPS TOKEN_ID... | tokenize TEXT | speed N_PROMPT N_GEN REPS THREADS\n", argv[0]);
        return 2;
    }
    llama_log_set(quiet_log, nullptr);
    llama_backend_init();
    llama_model_params model_params = llama_model_default_params();
    model_params.n_gpu_layers = 0;
    llama_model * model = llama_model_load_from_file(argv[1], model_params);
    if (model == nullptr) {
        std::fprintf(stderr, "error: llama.cpp could not load %s\n", argv[1]);
        return 1;
    }
    int rc;
    if (std::strcmp(argv[2], "tokenize") == 0) {
        rc = run_tokenize(model, argv[3]);
    } else if (std::strcmp(argv[2], "speed") == 0 && argc == 7) {
        rc = run_speed(model, std::atoi(argv[3]), std::atoi(argv[4]), std::atoi(argv[5]), std::atoi(argv[6]));
    } else if (std::strcmp(argv[2], "logits") == 0 && argc >= 5) {
        std::vector<llama_token> tokens;
        for (int i = 4; i < argc; ++i) {
            tokens.push_back(std::atoi(argv[i]));
        }
        rc = run_logits(model, std::atoi(argv[3]), tokens);
    } else {
        std::fprintf(stderr, "error: unknown mode %s\n", argv[2]);
        rc = 2;
    }
    llama_model_free(model);
    llama_backend_free();
    return rc;
}
