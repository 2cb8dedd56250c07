/* A small GPT-2 forward pass in float32, written from picogpt2's docs: a
 * candidate for compare's tests, independent of gpt2.py. Each -DBUG_...
 * breaks one operation the way ports get it wrong.
 *
 *   cc -O2 -o gpt2 gpt2.c -lm && ./gpt2 model.bin ids.bin out/
 *
 * model.bin is llm.c's layout (export --to llmc); ids.bin int32 token ids.
 * Every activation goes to out/KEY.LAYER.npy (out/KEY.npy after the blocks),
 * one layer at a time, in picogpt2's names and shapes, with save_npy from
 * docs/oracle.md (npy.h, which the test writes from it). Sums run left to right
 * in float32: the simplest implementation, and the one with the least margin;
 * -DPAIRWISE sums every dot product, mean and attention pairwise instead.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "npy.h"

/* -DNO_BIAS=1, 2, 3 or 4 leaves out the bias of c_attn, attention's c_proj,
 * c_fc or the MLP's c_proj. */
#ifndef NO_BIAS
#define NO_BIAS 0
#endif
#define C_ATTN 1
#define ATTN_C_PROJ 2
#define C_FC 3
#define MLP_C_PROJ 4
#define BIAS(which, b) (NO_BIAS == (which) ? NULL : (b))

typedef struct {
    int T, V, L, NH, C, Vp;
    float *wte, *wpe, *ln1w, *ln1b, *qkvw, *qkvb, *projw, *projb, *ln2w, *ln2b;
    float *fcw, *fcb, *fcprojw, *fcprojb, *lnfw, *lnfb, *head;
} Model;

static float *take(float **p, size_t n) { float *at = *p; *p += n; return at; }

/* llm.c's [n][OUT, IN] weights -> [n][IN, OUT]. */
static float *transposed(const float *w, int n, int OUT, int IN) {
    float *t = malloc(sizeof(float) * (size_t)n * OUT * IN);
    if (!t) exit(2);
    for (int l = 0; l < n; l++)
        for (int o = 0; o < OUT; o++)
            for (int i = 0; i < IN; i++)
                t[((size_t)l * IN + i) * OUT + o] = w[((size_t)l * OUT + o) * IN + i];
    return t;
}

static void load(Model *m, const char *path) {
    FILE *f = fopen(path, "rb");
    int32_t h[256];
    if (!f || fread(h, 4, 256, f) != 256 || h[0] != 20240326 || h[1] != 3) exit(2);
    m->T = h[2]; m->V = h[3]; m->L = h[4]; m->NH = h[5]; m->C = h[6]; m->Vp = h[7];
    size_t C = m->C, L = m->L;
    size_t n = m->Vp * C + m->T * C + L * (12 * C * C + 13 * C) + 2 * C;
    float *p = malloc(n * sizeof(float));
    if (!p || fread(p, sizeof(float), n, f) != n) exit(2);
    fclose(f);
    m->wte = take(&p, m->Vp * C); m->wpe = take(&p, m->T * C);
    m->ln1w = take(&p, L * C); m->ln1b = take(&p, L * C);
    m->qkvw = take(&p, L * 3 * C * C); m->qkvb = take(&p, L * 3 * C);
    m->projw = take(&p, L * C * C); m->projb = take(&p, L * C);
    m->ln2w = take(&p, L * C); m->ln2b = take(&p, L * C);
    m->fcw = take(&p, L * 4 * C * C); m->fcb = take(&p, L * 4 * C);
    m->fcprojw = take(&p, L * C * 4 * C); m->fcprojb = take(&p, L * C);
    m->lnfw = take(&p, C); m->lnfb = take(&p, C);
    m->qkvw = transposed(m->qkvw, L, 3 * C, C);
    m->projw = transposed(m->projw, L, C, C);
    m->fcw = transposed(m->fcw, L, 4 * C, C);
    m->fcprojw = transposed(m->fcprojw, L, C, 4 * C);
    m->head = transposed(m->wte, 1, m->V, C);  /* the head is wte itself: [C, V] */
}

#ifdef BUG_SCALE_HALF
/* x rounded to float16's 11 significant bits (normal range). */
static float half(float x) {
    int e;
    float m = frexpf(x, &e);
    return ldexpf(rintf(ldexpf(m, 11)), e - 11);
}
#endif

/* The sum of x[0], x[stride], ... (n terms): left to right, or pairwise with
 * -DPAIRWISE (halves summed apart, then added). */
static float total(const float *x, int n, size_t stride) {
#ifdef PAIRWISE
    if (n > 2) {
        int h = n / 2;
        return total(x, h, stride) + total(x + h * stride, n - h, stride);
    }
#endif
    float sum = 0;
    for (int i = 0; i < n; i++) sum += x[i * stride];
    return sum;
}

static const char *dir;

static void save(const char *key, int layer, const float *x, int ndim, int a, int b, int c) {
    char path[1024];
    int shape[3] = {a, b, c};
    if (layer < 0) snprintf(path, sizeof path, "%s/%s.npy", dir, key);
    else snprintf(path, sizeof path, "%s/%s.%d.npy", dir, key, layer);
    if (save_npy(path, x, ndim, shape)) exit(3);
}

static void layernorm(float *out, const float *x, const float *w, const float *b, int T, int C) {
    for (int t = 0; t < T; t++) {
        const float *row = x + t * C;
        float mean = total(row, C, 1) / C, var, sq[4096];
        for (int i = 0; i < C; i++) sq[i] = (row[i] - mean) * (row[i] - mean);
        var = total(sq, C, 1);
#ifdef BUG_UNBIASED
        var /= C - 1;
#else
        var /= C;
#endif
#if defined(BUG_EPS_OUTSIDE)
        float rstd = 1.0f / (sqrtf(var) + 1e-5f);
#elif defined(BUG_EPS_SMALL)
        float rstd = 1.0f / sqrtf(var + 1e-6f);
#else
        float rstd = 1.0f / sqrtf(var + 1e-5f);
#endif
        for (int i = 0; i < C; i++) out[t * C + i] = (row[i] - mean) * rstd * w[i] + b[i];
    }
}

#ifdef PAIRWISE
/* sum[o] = x[lo] w[lo][o] + ... + x[hi-1] w[hi-1][o], pairwise over i as total()
 * adds (halves apart, then together), for all o at once; scratch holds one row
 * of OUT per level of the halving. */
static void pairwise_rows(float *sum, const float *x, const float *w, int lo, int hi, int OUT,
                          float *scratch) {
    if (hi - lo <= 2) {
        for (int o = 0; o < OUT; o++) sum[o] = 0.0f;
        for (int i = lo; i < hi; i++)
            for (int o = 0; o < OUT; o++) sum[o] += x[i] * w[(size_t)i * OUT + o];
        return;
    }
    int mid = lo + (hi - lo) / 2;
    pairwise_rows(sum, x, w, lo, mid, OUT, scratch + OUT);
    pairwise_rows(scratch, x, w, mid, hi, OUT, scratch + OUT);
    for (int o = 0; o < OUT; o++) sum[o] += scratch[o];
}
#endif

/* out [T, OUT] = x [T, IN] @ w + bias, with w [IN, OUT] (transposed from
 * llm.c's [OUT, IN] at load). Each output's sum still runs left to right
 * over IN, in float32; the loop over the outputs is what the compiler may
 * vectorize, which changes no sum. */
static void matmul(float *out, const float *x, const float *w, const float *bias, int T, int IN,
                   int OUT) {
#ifdef PAIRWISE
    int depth = 2;
    for (int n = IN; n > 2; n = n - n / 2) depth++;
    float *scratch = malloc(sizeof(float) * (size_t)depth * OUT);
    for (int t = 0; t < T; t++) {
        float *sum = out + (size_t)t * OUT;
        pairwise_rows(sum, x + (size_t)t * IN, w, 0, IN, OUT, scratch);
        for (int o = 0; o < OUT; o++) sum[o] += bias ? bias[o] : 0.0f;
    }
    free(scratch);
    return;
#endif
    for (int t = 0; t < T; t++) {
        float *sum = out + (size_t)t * OUT;
        for (int o = 0; o < OUT; o++) sum[o] = bias ? bias[o] : 0.0f;
        for (int i = 0; i < IN; i++) {
            const float xi = x[(size_t)t * IN + i], *row = w + (size_t)i * OUT;
            for (int o = 0; o < OUT; o++) sum[o] += xi * row[o];
        }
    }
}

static float gelu(float x) {
#if defined(BUG_GELU_ERF)
    return 0.5f * x * (1.0f + erff(x / sqrtf(2.0f)));
#elif defined(BUG_GELU_CONSTANT)
    return 0.5f * x * (1.0f + tanhf(sqrtf(2.0f / 3.14f) * (x + 0.044715f * x * x * x)));
#elif defined(BUG_GELU_CUBIC)
    return 0.5f * x * (1.0f + tanhf(sqrtf(2.0f / (float)M_PI) * (x + 0.0447f * x * x * x)));
#else
    return 0.5f * x * (1.0f + tanhf(sqrtf(2.0f / (float)M_PI) * (x + 0.044715f * x * x * x)));
#endif
}

/* qkv [T, 3C] -> q, k or v [NH, T, hd] (which: 0, 1, 2). */
static void heads(float *out, const float *qkv, int which, int T, int C, int NH) {
    int hd = C / NH;
    for (int h = 0; h < NH; h++)
        for (int t = 0; t < T; t++)
            for (int d = 0; d < hd; d++)
                out[(h * T + t) * hd + d] = qkv[t * 3 * C + which * C + h * hd + d];
}

static void attention(float *scores, float *att, float *merged, const float *q, const float *k,
                      const float *v, int T, int C, int NH) {
    int hd = C / NH;
#if defined(BUG_SCALE)
    float scale = 1.0f / hd;
#elif defined(BUG_SCALE_HALF)
    float scale = half(1.0f / sqrtf(half((float)hd)));
#else
    float scale = 1.0f / sqrtf((float)hd);
#endif
    memset(scores, 0, sizeof(float) * NH * T * T);  /* above the diagonal: never computed */
    memset(att, 0, sizeof(float) * NH * T * T);
    for (int h = 0; h < NH; h++)
        for (int t = 0; t < T; t++) {
            float *s = scores + (h * T + t) * T, *a = att + (h * T + t) * T, top = -INFINITY;
            float terms[4096];
            for (int u = 0; u <= t; u++) {
                for (int d = 0; d < hd; d++) terms[d] = q[(h * T + t) * hd + d] * k[(h * T + u) * hd + d];
                s[u] = total(terms, hd, 1) * scale;
                if (s[u] > top) top = s[u];
            }
#ifdef BUG_SOFTMAX_NO_MAX
            top = 0; /* exp(s) overflows once a score passes 88.7 */
#endif
            for (int u = 0; u <= t; u++) a[u] = expf(s[u] - top);
            float sum = total(a, t + 1, 1);
            for (int u = 0; u <= t; u++) a[u] /= sum;
            for (int d = 0; d < hd; d++) {
                for (int u = 0; u <= t; u++) terms[u] = a[u] * v[(h * T + u) * hd + d];
                merged[t * C + h * hd + d] = total(terms, t + 1, 1);
            }
        }
}

int main(int argc, char **argv) {
    if (argc != 4) return 1;
    Model m;
    load(&m, argv[1]);
    dir = argv[3];
    FILE *f = fopen(argv[2], "rb");
    int32_t ids[4096];
    int T = f ? (int)fread(ids, 4, 4096, f) : 0;
    if (f) fclose(f);
    int C = m.C, NH = m.NH, hd = C / NH;
    float *x = malloc(sizeof(float) * T * C), *ln = malloc(sizeof(float) * T * C);
    float *qkv = malloc(sizeof(float) * T * 3 * C), *q = malloc(sizeof(float) * T * C);
    float *k = malloc(sizeof(float) * T * C), *v = malloc(sizeof(float) * T * C);
    float *scores = malloc(sizeof(float) * NH * T * T), *att = malloc(sizeof(float) * NH * T * T);
    float *merged = malloc(sizeof(float) * T * C), *out = malloc(sizeof(float) * T * C);
    float *pre = malloc(sizeof(float) * T * 4 * C), *hid = malloc(sizeof(float) * T * 4 * C);
    float *logits = malloc(sizeof(float) * T * m.V);
#ifdef BUG_WPE_SHIFT
    const int shift = 1; /* position t takes wpe[t + 1] */
#else
    const int shift = 0;
#endif
    for (int t = 0; t < T; t++)
        for (int i = 0; i < C; i++) x[t * C + i] = m.wte[ids[t] * C + i] + m.wpe[(t + shift) * C + i];
    save("hidden", 0, x, 2, T, C, 0);
    for (int l = 0; l < m.L; l++) {
        layernorm(ln, x, m.ln1w + l * C, m.ln1b + l * C, T, C);
        save("ln_1", l, ln, 2, T, C, 0);
        matmul(qkv, ln, m.qkvw + (size_t)l * 3 * C * C, BIAS(C_ATTN, m.qkvb + l * 3 * C), T, C, 3 * C);
#if defined(BUG_QK_SWAP)
        heads(q, qkv, 1, T, C, NH); heads(k, qkv, 0, T, C, NH); heads(v, qkv, 2, T, C, NH);
#elif defined(BUG_KV_SWAP)
        heads(q, qkv, 0, T, C, NH); heads(k, qkv, 2, T, C, NH); heads(v, qkv, 1, T, C, NH);
#else
        heads(q, qkv, 0, T, C, NH); heads(k, qkv, 1, T, C, NH); heads(v, qkv, 2, T, C, NH);
#endif
        save("q", l, q, 3, NH, T, hd); save("k", l, k, 3, NH, T, hd); save("v", l, v, 3, NH, T, hd);
        attention(scores, att, merged, q, k, v, T, C, NH);
        save("attn_scores", l, scores, 3, NH, T, T); save("attn", l, att, 3, NH, T, T);
        save("attn_heads", l, merged, 2, T, C, 0);
        matmul(out, merged, m.projw + (size_t)l * C * C, BIAS(ATTN_C_PROJ, m.projb + l * C), T, C, C);
        save("attn_out", l, out, 2, T, C, 0);
        for (int i = 0; i < T * C; i++) x[i] += out[i];
        save("resid_attn", l, x, 2, T, C, 0);
        layernorm(ln, x, m.ln2w + l * C, m.ln2b + l * C, T, C);
        save("ln_2", l, ln, 2, T, C, 0);
        matmul(pre, ln, m.fcw + (size_t)l * 4 * C * C, BIAS(C_FC, m.fcb + l * 4 * C), T, C, 4 * C);
        save("mlp_pre", l, pre, 2, T, 4 * C, 0);
        for (int i = 0; i < T * 4 * C; i++) hid[i] = gelu(pre[i]);
        save("mlp_hidden", l, hid, 2, T, 4 * C, 0);
        matmul(out, hid, m.fcprojw + (size_t)l * 4 * C * C, BIAS(MLP_C_PROJ, m.fcprojb + l * C), T,
               4 * C, C);
        save("mlp_out", l, out, 2, T, C, 0);
        for (int i = 0; i < T * C; i++) x[i] += out[i];
        save("hidden", l + 1, x, 2, T, C, 0);
    }
    layernorm(ln, x, m.lnfw, m.lnfb, T, C);
    save("ln_f", -1, ln, 2, T, C, 0);
    matmul(logits, ln, m.head, NULL, T, C, m.V);  /* no bias */
    save("logits", -1, logits, 2, T, m.V, 0);
    return 0;
}
