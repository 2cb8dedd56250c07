// Save llama.cpp's tensors of one forward pass as .npy files, for
//     python -m picogpt2.compare --model MODEL.gguf OUT_DIR
// (docs/llamacpp.md). Each node of the graph whose name compare reads
// (attn_norm-0, wqkv_b-0, kq-0, kq_soft_max-0, kqv_out-0, ffn_inp-0,
// ffn_norm-0, ffn_up_b-0, ffn_gelu-0, ffn_out-0, l_out-0, inpL,
// result_norm, result_output) becomes NAME.npy, float32, in NumPy's order
// (ggml's ne reversed); the ids become ids.npy.
//
// Build it against a llama.cpp checkout built with CMake:
//     g++ -std=c++17 -O2 llamacpp_save_tensors.cpp -o save_tensors \
//         -I llama.cpp/include -I llama.cpp/ggml/include \
//         -L llama.cpp/build/bin -lllama -lggml -lggml-base
// Run it:
//     save_tensors MODEL.gguf OUT_DIR 464,2068,7586 [--defaults]
// A fair run (the default here) turns flash attention off and keeps the
// KV cache in float32; --defaults keeps llama.cpp's own settings (flash
// attention as it decides, a float16 cache) to see what they cost.

#include "ggml-backend.h"
#include "ggml.h"
#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <sstream>
#include <string>
#include <vector>

static const std::set<std::string> WANTED = {
    "attn_norm", "wqkv_b", "kq", "kq_soft_max", "kqv_out", "ffn_inp", "ffn_norm",
    "ffn_up_b", "ffn_gelu", "ffn_out", "l_out", "inpL", "result_norm", "result_output"};

struct Saver {
    std::string dir;
    int failures = 0;
};

// The node's name without its layer suffix ("kq-3" -> "kq").
static bool wanted(const char * name) {
    std::string base(name);
    size_t dash = base.rfind('-');
    if (dash != std::string::npos && base.find_first_not_of("0123456789", dash + 1) == std::string::npos) {
        base = base.substr(0, dash);
    }
    return WANTED.count(base) > 0;
}

// A .npy file (version 1.0): the header, then the values, C order.
static bool write_npy(const std::string & path, const char * descr, const std::vector<int64_t> & shape,
                      const void * data, size_t nbytes) {
    std::ostringstream dims;
    for (size_t i = 0; i < shape.size(); i++) {
        dims << shape[i] << (shape.size() == 1 ? "," : (i + 1 < shape.size() ? ", " : ""));
    }
    std::string header = "{'descr': '" + std::string(descr) + "', 'fortran_order': False, 'shape': (" +
                         dims.str() + "), }";
    size_t total = 10 + header.size() + 1;
    header += std::string((64 - total % 64) % 64, ' ') + "\n";
    FILE * f = std::fopen(path.c_str(), "wb");
    if (!f) {
        return false;
    }
    const unsigned short length = (unsigned short) header.size();
    std::fwrite("\x93NUMPY\x01\x00", 1, 8, f);
    std::fwrite(&length, 2, 1, f);  // little-endian hosts
    std::fwrite(header.data(), 1, header.size(), f);
    bool ok = std::fwrite(data, 1, nbytes, f) == nbytes;
    return std::fclose(f) == 0 && ok;
}

// Called twice per node: ask (do we want its data?), then with the data.
static bool on_node(struct ggml_tensor * t, bool ask, void * user_data) {
    if (ask) {
        return wanted(t->name);
    }
    Saver * saver = (Saver *) user_data;
    std::vector<uint8_t> raw(ggml_nbytes(t));
    ggml_backend_tensor_get(t, raw.data(), 0, raw.size());
    // Gather the elements through ggml's strides (a view need not be contiguous), as float32.
    std::vector<float> values;
    values.reserve(ggml_nelements(t));
    for (int64_t i3 = 0; i3 < t->ne[3]; i3++)
        for (int64_t i2 = 0; i2 < t->ne[2]; i2++)
            for (int64_t i1 = 0; i1 < t->ne[1]; i1++)
                for (int64_t i0 = 0; i0 < t->ne[0]; i0++) {
                    const uint8_t * p = raw.data() + i0 * t->nb[0] + i1 * t->nb[1] + i2 * t->nb[2] + i3 * t->nb[3];
                    if (t->type == GGML_TYPE_F32) {
                        values.push_back(*(const float *) p);
                    } else if (t->type == GGML_TYPE_F16) {
                        values.push_back(ggml_fp16_to_fp32(*(const ggml_fp16_t *) p));
                    } else {
                        std::fprintf(stderr, "%s: type %s not saved\n", t->name, ggml_type_name(t->type));
                        return true;
                    }
                }
    std::vector<int64_t> shape;  // NumPy's order: ggml's ne reversed, trailing 1s dropped
    int n_dims = ggml_n_dims(t);
    for (int i = n_dims - 1; i >= 0; i--) {
        shape.push_back(t->ne[i]);
    }
    std::string path = saver->dir + "/" + t->name + ".npy";
    if (!write_npy(path, "<f4", shape, values.data(), values.size() * sizeof(float))) {
        std::fprintf(stderr, "cannot write %s\n", path.c_str());
        saver->failures++;
    }
    return true;
}

int main(int argc, char ** argv) {
    if (argc < 4) {
        std::fprintf(stderr, "usage: %s MODEL.gguf OUT_DIR ID,ID,... [--defaults]\n", argv[0]);
        return 2;
    }
    std::vector<llama_token> ids;
    std::stringstream list(argv[3]);
    for (std::string item; std::getline(list, item, ',');) {
        ids.push_back((llama_token) std::atoi(item.c_str()));
    }
    const bool defaults = argc > 4 && std::strcmp(argv[4], "--defaults") == 0;

    llama_backend_init();
    llama_model * model = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (!model) {
        std::fprintf(stderr, "%s: cannot load\n", argv[1]);
        return 1;
    }
    Saver saver{argv[2]};
    llama_context_params params = llama_context_default_params();
    params.n_ctx = ids.size();
    params.n_batch = params.n_ubatch = ids.size();
    params.cb_eval = on_node;
    params.cb_eval_user_data = &saver;
    if (!defaults) {
        params.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
        params.type_k = params.type_v = GGML_TYPE_F32;
    }
    llama_context * ctx = llama_init_from_model(model, params);
    llama_batch batch = llama_batch_init(ids.size(), 0, 1);
    for (size_t i = 0; i < ids.size(); i++) {
        batch.token[i] = ids[i];
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = true;  // every position's logits: result_output holds them all
    }
    batch.n_tokens = ids.size();
    int status = llama_decode(ctx, batch);
    std::vector<int64_t> shape = {(int64_t) ids.size()};
    std::vector<int64_t> wide(ids.begin(), ids.end());
    write_npy(saver.dir + "/ids.npy", "<i8", shape, wide.data(), wide.size() * sizeof(int64_t));
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    if (status != 0) {
        std::fprintf(stderr, "llama_decode failed: %d\n", status);
        return 1;
    }
    return saver.failures ? 1 : 0;
}
