/* Integer products of quantized weights with up to MATVEC_MAX_N tokens (see mvq.cuh). */
#include "gpu_worker/cuda/cuda_util.cuh"
#include "gpu_worker/cuda/mvq.cuh"
#include "gpu_worker/cuda/quant.cuh"

#include <type_traits>

#define MVQ_WARPS 4
/* One token's rows of at least this many 32-element units load two pairs
 * at a time (row_dotq's U4): 7B ffn_down (592 units) 444 / 447 / 450 ->
 * 468 / 469 / 468 tok/s (one call, interleaved); 1.5B's down (280 units: a
 * warp's first lane has 3, loaded together instead of in two round trips)
 * 1,054 -> 1,071. */
#define MVQ_U4_UNITS 256

/* The activations of one product as the kernels read them (mmq.cuh). */
struct xq_view {
    const int8_t *q;     /* [n][K] */
    const float *d, *s;  /* [n][K/32] (class 3); d: [n][K/256] (class 4) */
    const int32_t *bsum; /* [n][K/16] (class 4) */
    int K;
};

static __device__ __forceinline__ int dot4(uint32_t w, uint32_t x, int c)
{
    return __dp4a((int)w, (int)x, c);
}

/* c + the dot product of 16 weight bytes (q[0..3]) with 16 activation bytes. */
static __device__ __forceinline__ int dot16(const uint32_t *q, uint4 a, int c)
{
    return dot4(q[3], a.w, dot4(q[2], a.z, dot4(q[1], a.y, dot4(q[0], a.x, c))));
}

/* NW 32-bit words of the bytes at p (2-byte aligned), from aligned loads: the
 * last load reads at most 2 bytes past the NW words, within the same aligned
 * word as their last byte. */
template <int NW> static __device__ __forceinline__ void ld_words(const uint8_t *p, uint32_t *w)
{
    const uint32_t *a = (const uint32_t *)((uintptr_t)p & ~(uintptr_t)3);
    const unsigned sh = ((unsigned)(uintptr_t)p & 2u) * 8u;
    uint32_t r[NW + 1];
#pragma unroll
    for (int i = 0; i < NW; i++)
        r[i] = __ldg(a + i);
    r[NW] = sh ? __ldg(a + NW) : 0u;
#pragma unroll
    for (int i = 0; i < NW; i++)
        w[i] = __funnelshift_r(r[i], r[i + 1], sh);
}

static __device__ __forceinline__ uint32_t ld_u16(const uint8_t *p)
{
    return __ldg((const unsigned short *)p);
}

static __device__ __forceinline__ float half_bits(uint32_t h)
{
    return __half2float(__ushort_as_half((unsigned short)(h & 0xffffu)));
}

/* Bits 0..3 of h to bit 4 of bytes 0..3 (the 5th bit of Q5 quants). */
static __device__ __forceinline__ uint32_t bit4_bytes(uint32_t h)
{
    return ((h & 15u) * 0x00204081u & 0x01010101u) << 4;
}

/* The weight bytes of one unit (32 elements of a row) in registers. A unit is
 * a whole block of the legacy types; of a k-quant super-block (8 units), unit
 * u holds elements 64c + l0 + [0, 16) and 64c + 32 + l0 + [0, 16) for Q4_K/
 * Q5_K (c = u / 2, l0 = 16 (u % 2): one 16-byte load of quants), and
 * 128h + 32j + l0 + [0, 8), j < 4, for Q2_K/Q3_K/Q6_K (h = u / 4,
 * l0 = 8 (u % 4)). unit_load only loads (no branches), so that the loads of
 * several units are in flight together; unit_dot decodes and multiplies.
 *   legacy  w[0] = d (| m << 16), then [qh], qs
 *   Q4_K    w[0..3] = d, dmin, scales; w[4..7] = quants; Q5_K w[8..11] = qh
 *   Q6_K    w[0..5] = ql, ql + 32, qh shares; w[6] = the 4 scales; w[7] = d
 *   Q2_K/Q3_K  w[0..7] = quants (decoded), w[8] = scales, w[9] = mins, w[10] = d | dmin << 16 */
struct uraw {
    uint32_t w[12];
};

/* Where unit u's block starts in its row. */
template <int T> static __device__ __forceinline__ size_t unit_off(int u)
{
    return (size_t)(qtraits<T>::QK == 32 ? u : u >> 3) * qtraits<T>::BS;
}

/* Unit u (s = u % 8) of the block at b. */
template <int T>
static __device__ __forceinline__ void unit_load(const uint8_t *__restrict__ b, int s, uraw &r)
{
    if (T == QT_Q8_0G || T == QT_Q5_0G || T == QT_Q6_KG) { /* grouped: aligned loads */
        const gfields f = gblock<T>(b);
        r.w[T == QT_Q6_KG ? 7 : 0] = ld_u16(f.d);
        if (T == QT_Q8_0G) {
            uint4 a = __ldg((const uint4 *)f.q), c = __ldg((const uint4 *)f.q + 1);
            r.w[1] = a.x, r.w[2] = a.y, r.w[3] = a.z, r.w[4] = a.w;
            r.w[5] = c.x, r.w[6] = c.y, r.w[7] = c.z, r.w[8] = c.w;
        } else if (T == QT_Q5_0G) {
            uint4 a = __ldg((const uint4 *)f.q);
            r.w[1] = __ldg((const uint32_t *)f.h);
            r.w[2] = a.x, r.w[3] = a.y, r.w[4] = a.z, r.w[5] = a.w;
        } else { /* the A-block's unit s: gpu_layout.h */
            uint4 a = __ldg((const uint4 *)(f.q + 16 * s));
            uint2 h = __ldg((const uint2 *)(f.q + 128 + 8 * s));
            r.w[0] = a.x, r.w[1] = a.y, r.w[2] = a.z, r.w[3] = a.w;
            r.w[4] = h.x, r.w[5] = h.y;
            r.w[6] = __ldg((const uint32_t *)(f.q + 192 + 4 * (s >> 1)));
        }
        return;
    }
    if (qtraits<T>::QK == 32) {
        if (T == QT_Q4_1 || T == QT_Q5_1) {
            r.w[0] = __ldg((const uint32_t *)b);
            ld_words<T == QT_Q4_1 ? 4 : 5>(b + 4, r.w + 1);
        } else {
            r.w[0] = ld_u16(b);
            ld_words<T == QT_Q8_0 ? 8 : T == QT_Q4_0 ? 4 : 5>(b + 2, r.w + 1);
        }
        return;
    }
    if (T == QT_Q4_K || T == QT_Q5_K) {
        const int c = s >> 1, l0 = (s & 1) * 16;
        uint4 h = __ldg((const uint4 *)b);
        uint4 q = __ldg((const uint4 *)(b + (T == QT_Q4_K ? 16 : 48) + 32 * c + l0));
        r.w[0] = h.x, r.w[1] = h.y, r.w[2] = h.z, r.w[3] = h.w;
        r.w[4] = q.x, r.w[5] = q.y, r.w[6] = q.z, r.w[7] = q.w;
        if (T == QT_Q5_K) {
            uint4 qh = __ldg((const uint4 *)(b + 16 + l0));
            r.w[8] = qh.x, r.w[9] = qh.y, r.w[10] = qh.z, r.w[11] = qh.w;
        }
    } else if (T == QT_Q6_K) {
        const int h = s >> 2, l0 = (s & 3) * 8;
        ld_words<2>(b + 64 * h + l0, r.w);
        ld_words<2>(b + 64 * h + 32 + l0, r.w + 2);
        ld_words<2>(b + 128 + 32 * h + l0, r.w + 4);
        uint32_t sc[2];
        ld_words<2>(b + 192 + 8 * h, sc); /* scales 8h + l0/16 + 2j: bytes 0,2,4,6 or 1,3,5,7 */
        r.w[6] = __byte_perm(sc[0], sc[1], (l0 >> 4) ? 0x7531 : 0x6420);
        r.w[7] = ld_u16(b + 208);
    } else { /* Q2_K, Q3_K: the generic decoders */
        const int h = s >> 2, l0 = (s & 3) * 8;
        uint32_t scs = 0, mns = 0;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            r.w[2 * j] = quants4<T>(b, 128 * h + 32 * j + l0);
            r.w[2 * j + 1] = quants4<T>(b, 128 * h + 32 * j + l0 + 4);
            int sc, mn;
            kscale<T>(b, 8 * h + 2 * j + (l0 >> 4), sc, mn);
            scs |= (uint32_t)(sc & 255) << 8 * j;
            mns |= (uint32_t)mn << 8 * j;
        }
        r.w[8] = scs;
        r.w[9] = mns;
        r.w[10] = T == QT_Q2_K ? __ldg((const uint32_t *)(b + 80)) : ld_u16(b + 108);
    }
}

/* Byte j of w as a signed / unsigned integer. */
static __device__ __forceinline__ int sbyte(uint32_t w, int j)
{
    return (int)(int8_t)(w >> 8 * j);
}

static __device__ __forceinline__ int ubyte(uint32_t w, int j)
{
    return (int)(w >> 8 * j & 255u);
}

/* acc[t] += unit u (loaded in r) . token t. Every path adds a unit by this
 * same code, unconditionally or inside a branch that skips a unit past the
 * row's end (a select on the sum instead let the compiler fuse the additions
 * differently: a token's bits depended on the path, so on its batch; the
 * branch also skips the work where a whole warp's unit is past the end). */
template <int T, int NT>
static __device__ __forceinline__ void unit_dot(const uraw &r, const xq_view &x, int u, int n,
                                                float (&acc)[NT])
{
    constexpr int B = qbase(T); /* grouped types decode as their base type */
    const int K = x.K;
    if (qtraits<T>::QK == 32) {
        constexpr bool HAS_M = B == QT_Q4_1 || B == QT_Q5_1;
        uint32_t q[8]; /* quants of elements 4i..4i+3 */
        if (B == QT_Q8_0) {
#pragma unroll
            for (int i = 0; i < 8; i++)
                q[i] = r.w[1 + i];
        } else if (B == QT_Q4_0 || B == QT_Q4_1) {
#pragma unroll
            for (int i = 0; i < 4; i++) {
                q[i] = r.w[1 + i] & 0x0F0F0F0Fu;
                q[i + 4] = r.w[1 + i] >> 4 & 0x0F0F0F0Fu;
                if (B == QT_Q4_0) {
                    q[i] = __vsub4(q[i], 0x08080808u);
                    q[i + 4] = __vsub4(q[i + 4], 0x08080808u);
                }
            }
        } else { /* Q5_0, Q5_1: qh then qs */
            const uint32_t qh = r.w[1];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                q[i] = (r.w[2 + i] & 0x0F0F0F0Fu) | bit4_bytes(qh >> 4 * i);
                q[i + 4] = (r.w[2 + i] >> 4 & 0x0F0F0F0Fu) | bit4_bytes(qh >> (16 + 4 * i));
                if (B == QT_Q5_0) {
                    q[i] = __vsub4(q[i], 0x10101010u);
                    q[i + 4] = __vsub4(q[i + 4], 0x10101010u);
                }
            }
        }
        const float d = half_bits(r.w[0]), m = HAS_M ? half_bits(r.w[0] >> 16) : 0.f;
#pragma unroll
        for (int t = 0; t < NT; t++) {
            if (NT > 1 && t >= n) break;
            const uint4 *xp = (const uint4 *)(x.q + (size_t)t * K + 32 * u);
            int s = dot16(q + 4, xp[1], dot16(q, xp[0], 0));
            size_t bi = (size_t)t * (K / 32) + u;
            float v = (float)s * (d * x.d[bi]);
            if (HAS_M) v += m * x.s[bi];
            acc[t] += v;
        }
        return;
    }
    const int sb = u >> 3, s = u & 7;
    if (T == QT_Q4_K || T == QT_Q5_K) {
        const int c = s >> 1;
        uint32_t lo[4], hi[4];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            lo[i] = r.w[4 + i] & 0x0F0F0F0Fu;
            hi[i] = r.w[4 + i] >> 4 & 0x0F0F0F0Fu;
            if (T == QT_Q5_K) {
                lo[i] |= (r.w[8 + i] >> 2 * c & 0x01010101u) << 4;
                hi[i] |= (r.w[8 + i] >> (2 * c + 1) & 0x01010101u) << 4;
            }
        }
        /* scale/min pairs 2c and 2c + 1 (quant.cuh's packing), without branches */
        const int sh = 16 * (c & 1);
        const uint32_t p1 = r.w[1] >> sh, p2 = r.w[2] >> sh, p3 = r.w[3] >> sh;
        const uint32_t scp = c < 2 ? p1 & 0x3F3Fu : (p3 & 0x0F0Fu) | (p1 >> 2 & 0x3030u);
        const uint32_t mp = c < 2 ? p2 & 0x3F3Fu : (p3 >> 4 & 0x0F0Fu) | (p2 >> 2 & 0x3030u);
        const int sc0 = ubyte(scp, 0), sc1 = ubyte(scp, 1), m0 = ubyte(mp, 0), m1 = ubyte(mp, 1);
        const float d = half_bits(r.w[0]), dm = half_bits(r.w[0] >> 16);
#pragma unroll
        for (int t = 0; t < NT; t++) {
            if (NT > 1 && t >= n) break;
            const int8_t *xp = x.q + (size_t)t * K + 256 * sb + 64 * c + (s & 1) * 16;
            int il = dot16(lo, *(const uint4 *)xp, 0), ih = dot16(hi, *(const uint4 *)(xp + 32), 0);
            const int32_t *bs = x.bsum + (size_t)t * (K / 16) + 16 * sb + 4 * c + (s & 1);
            float dx = x.d[(size_t)t * (K / 256) + sb];
            float v = (dx * d) * (float)(sc0 * il + sc1 * ih) -
                      (dx * dm) * (float)(m0 * bs[0] + m1 * bs[2]);
            acc[t] += v;
        }
        return;
    }
    const int h = s >> 2, l0 = (s & 3) * 8;
    uint32_t q[4][2]; /* j, word */
    uint32_t scw, mnw = 0;
    float d, dm = 0.f;
    if (B == QT_Q6_K) {
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int k = 0; k < 2; k++) {
                uint32_t lo = r.w[(j & 1) * 2 + k] >> 4 * (j >> 1) & 0x0F0F0F0Fu;
                q[j][k] = __vsub4(lo | (r.w[4 + k] >> 2 * j & 0x03030303u) << 4, 0x20202020u);
            }
        scw = r.w[6];
        d = half_bits(r.w[7]);
    } else {
#pragma unroll
        for (int j = 0; j < 4; j++) {
            q[j][0] = r.w[2 * j];
            q[j][1] = r.w[2 * j + 1];
        }
        scw = r.w[8];
        mnw = r.w[9];
        d = half_bits(r.w[10]);
        if (T == QT_Q2_K) dm = half_bits(r.w[10] >> 16);
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
        if (NT > 1 && t >= n) break;
        const int8_t *xp = x.q + (size_t)t * K + 256 * sb + 128 * h + l0;
        int isum = 0, msum = 0;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            uint2 X = *(const uint2 *)(xp + 32 * j);
            isum += sbyte(scw, j) * dot4(q[j][1], X.y, dot4(q[j][0], X.x, 0));
            if (T == QT_Q2_K)
                msum += ubyte(mnw, j) * dot4(0x01010101u, X.y, dot4(0x01010101u, X.x, 0));
        }
        float dx = x.d[(size_t)t * (K / 256) + sb];
        float v = (dx * d) * (float)isum;
        if (T == QT_Q2_K) v -= (dx * dm) * (float)msum;
        acc[t] += v;
    }
}

/* The wait for the previous kernel, then the load of *pre (the residual a
 * product adds to) if this thread has one not yet loaded: issued with the
 * activations' loads instead of after the sum. */
static __device__ __forceinline__ void wait_pre(const float *&pre, float &pv)
{
    griddep_wait();
    if (pre) {
        pv = *pre;
        pre = nullptr;
    }
}

/* acc[t] += the units of row w this thread takes (lane, lane + step, ..),
 * two at a time: both units' loads are issued before either is used (a
 * unit past the row's end reloads the first and adds nothing). A warp
 * whose lanes have one unit at most takes it alone (a pair would load and
 * multiply one for nothing; the sums are the same). With U4, two pairs'
 * loads at a time while the warp's first lane has three units left or more
 * (more bytes in flight, more registers); with U6, all of a lane's units at
 * once where the warp's first lane has 5 or 6 (one memory round trip instead
 * of two: 1.5B b=1 1,164 -> 1,178 tok/s, 7B 475 -> 480). Each unit is added
 * by the same code as in the pairs (unit_dot), in the same order, so the
 * bits do not change. Waits for the previous kernel after the first loads
 * (wait_pre: pre, if set, is loaded into pv there and set to null). */
template <int T, int NT, bool U4 = false, bool U6 = false>
static __device__ __forceinline__ void row_dotq(const uint8_t *__restrict__ w, const xq_view &x,
                                                int n, float (&acc)[NT], int lane, int step,
                                                const float *&pre, float &pv)
{
    const int nu = x.K / 32;
    if (U6) {
        const int first = lane & ~31, c0 = (nu - first + step - 1) / step;
        if (c0 >= 5 && c0 <= 6) {
            uraw r[6];
            int uu[6];
            bool ok[6];
#pragma unroll
            for (int k = 0; k < 6; k++) {
                uu[k] = lane + k * step;
                ok[k] = uu[k] < nu;
                if (!ok[k]) uu[k] = lane;
                unit_load<T>(w + unit_off<T>(uu[k]), uu[k] & 7, r[k]);
            }
            wait_pre(pre, pv);
#pragma unroll
            for (int k = 0; k < 6; k++)
                if (k < 2 || ok[k]) unit_dot<T, NT>(r[k], x, uu[k], n, acc);
            return;
        }
    }
    if ((lane & ~31) + step >= nu) { /* the warp's first lane, which has the most, has one */
        if (lane < nu) {
            uraw r1;
            unit_load<T>(w + unit_off<T>(lane), lane & 7, r1);
            wait_pre(pre, pv);
            unit_dot<T, NT>(r1, x, lane, n, acc);
        }
        return;
    }
    int u = lane;
    if (U4)
        for (; (lane & ~31) + (u - lane) + 2 * step < nu; u += 4 * step) {
            /* the warp's first lane has 3 units left at least; others may have 2 */
            const bool ok3 = u + 2 * step < nu, ok4 = u + 3 * step < nu;
            const int u2 = u + step, u3 = ok3 ? u + 2 * step : u, u4 = ok4 ? u + 3 * step : u2;
            uraw r1, r2, r3, r4;
            unit_load<T>(w + unit_off<T>(u), u & 7, r1);
            unit_load<T>(w + unit_off<T>(u2), u2 & 7, r2);
            unit_load<T>(w + unit_off<T>(u3), u3 & 7, r3);
            unit_load<T>(w + unit_off<T>(u4), u4 & 7, r4);
            if (u == lane) wait_pre(pre, pv);
            unit_dot<T, NT>(r1, x, u, n, acc);
            unit_dot<T, NT>(r2, x, u2, n, acc);
            if (ok3) unit_dot<T, NT>(r3, x, u3, n, acc);
            if (ok4) unit_dot<T, NT>(r4, x, u4, n, acc);
        }
    for (; u < nu; u += 2 * step) {
        const bool ok2 = u + step < nu;
        const int u2 = ok2 ? u + step : u; /* past the end: reload u, add nothing */
        uraw r1, r2;
        unit_load<T>(w + unit_off<T>(u), u & 7, r1);
        unit_load<T>(w + unit_off<T>(u2), u2 & 7, r2);
        if (u == lane) wait_pre(pre, pv); /* the first weights load while the previous kernel ends */
        unit_dot<T, NT>(r1, x, u, n, acc);
        if (ok2) unit_dot<T, NT>(r2, x, u2, n, acc);
    }
}

/* Token t's (cos, sin) for row me's element and its cache offset, in lane t
 * (rope_pre, before the wait: the table and the positions are no earlier
 * kernel's output). */
struct rope_at {
    float2 c;
    size_t dst;
};

static __device__ __forceinline__ rope_at rope_pre(const struct mv_rope &rp, const seg_row &me,
                                                   int t)
{
    rope_at r = {make_float2(0.f, 0.f), 0};
    const int P = rp.pos[t], half_rd = rp.rope_dim / 2, j = me.r % rp.hd;
    r.dst = (size_t)rp.seq[t] * rp.kl.sstride + (size_t)P * rp.kl.pstride;
    if (me.role != MV_CACHE_V && j < rp.rope_dim) {
        const bool first = rp.kind == 1 ? j < half_rd : (j & 1) == 0;
        const int i = rp.kind == 1 ? (first ? j : j - half_rd) : j >> 1;
        r.c = rp.tab[(size_t)P * half_rd + i];
    }
    return r;
}

/* The rope epilogue (kernels.cuh, struct mv_rope): lane t of a row's first
 * warp holds token t's value v (bias added) and its rope_pre; a rotated
 * row's partner is the block's adjacent row slot (find_row puts NEOX pairs
 * there, wpr <= 2). The arithmetic is k_rope_store's. Every thread of the
 * block calls it. */
template <int NT>
static __device__ __forceinline__ void rope_epilogue(const struct mv_args &a, const seg_row &me,
                                                     const float (&v)[NT], int n, int slot,
                                                     bool writer, const rope_at &ra)
{
    __shared__ float xch[MVQ_WARPS][NT];
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int t = 0; t < NT; t++)
        if (writer && lane == t && t < n) xch[slot][t] = v[t];
    __syncthreads();
    if (!writer) return;
    const struct mv_rope &rp = a.rope;
    const int half_rd = rp.rope_dim / 2;
#pragma unroll
    for (int t = 0; t < NT; t++) {
        if (lane != t || t >= n) continue;
        const size_t dst = ra.dst;
        float out = v[t];
        const int j = me.r % rp.hd;
        if (me.role != MV_CACHE_V && j < rp.rope_dim) {
            const bool first = rp.kind == 1 ? j < half_rd : (j & 1) == 0;
            const float2 c = ra.c;
            const float o = xch[slot ^ 1][t];
            const float x0 = first ? v[t] : o, x1 = first ? o : v[t];
            out = first ? __fmaf_rn(x0, c.x, -__fmul_rn(x1, c.y))
                        : __fmaf_rn(x0, c.y, __fmul_rn(x1, c.x));
        }
        if (me.role == MV_ROPE_K)
            rp.kc[dst + me.r] = __float2half_rn(out);
        else if (me.role == MV_CACHE_V)
            rp.vc[dst + me.r] = __float2half_rn(out);
        else
            me.y[(size_t)t * me.N + me.r] = out;
    }
}

/* R rows per warp for rows of at most 64 units (P: two per lane, as
 * row_dotq's pairs; else one): the R rows' loads in flight together. The
 * output product's one row per warp left one or two 16-34-byte loads per
 * lane: with 2, 0.5B b=1 1,871 -> 1,932 tok/s, 1.5B 1,140 -> 1,164,
 * Llama-1B 1,834 -> 1,871 (4: no better; at 8 tokens 2 cost 2.6%, so one
 * token only). Each row's sum is the one-row kernel's, unit by unit, so the
 * bits are the same. */
template <int T, int NT, int R, bool P>
static __global__ void __launch_bounds__(MVQ_WARPS * 32)
    mvq_rows_kernel(struct mv_args a, struct xq_view x, int n)
{
    griddep_launch();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int r0 = R * (blockIdx.x * MVQ_WARPS + warp);
    struct seg_row m[R];
    float acc[R][NT];
#pragma unroll
    for (int i = 0; i < R; i++) {
        m[i] = find_row(a, r0 + i);
#pragma unroll
        for (int t = 0; t < NT; t++)
            acc[i][t] = 0.f;
    }
    const int nu = x.K / 32;
    if (lane < nu) { /* with P, rows of 33-64 units: row_dotq's pairs */
        const bool ok2 = P && lane + 32 < nu;
        const int u2 = ok2 ? lane + 32 : lane;
        uraw r[R], r2[R];
#pragma unroll
        for (int i = 0; i < R; i++)
            if (m[i].w) {
                unit_load<T>(m[i].w + unit_off<T>(lane), lane & 7, r[i]);
                if (P) unit_load<T>(m[i].w + unit_off<T>(u2), u2 & 7, r2[i]);
            }
        griddep_wait();
#pragma unroll
        for (int i = 0; i < R; i++)
            if (m[i].w) {
                unit_dot<T, NT>(r[i], x, lane, n, acc[i]);
                if (ok2) unit_dot<T, NT>(r2[i], x, u2, n, acc[i]);
            }
    }
    griddep_wait();
#pragma unroll
    for (int i = 0; i < R; i++) {
#pragma unroll
        for (int t = 0; t < NT; t++)
            acc[i][t] = warp_sum(acc[i][t]);
#pragma unroll
        for (int t = 0; t < NT; t++) {
            if (lane == t && t < n && m[i].w) {
                float v = acc[i][t];
                if (m[i].bias) v += m[i].bias[m[i].r];
                float *yp = m[i].y + (size_t)t * m[i].N + m[i].r;
                *yp = a.add ? *yp + v : v;
            }
        }
    }
}

/* Block = MVQ_WARPS / wpr rows of the segments, wpr warps per row; lane t of
 * a row's first warp writes token t. Segments of type T, or (T2 != T) of T
 * and T2: q/k/v of two types in one launch. ROPE: the rope epilogue (a.rope
 * set), a separate instance so that the other products keep their registers.
 * Lane t of a writing warp loads what no earlier kernel writes before the
 * wait (with rope: the bias, the table entry, the positions) and right after
 * it the residual it adds to (o and down, except in U4's instance without
 * U6): not dependent loads after the sum (0.5B b=1 1,935 -> 2,065 tok/s, N=8
 * +8%; 1.5B, Llama-1B and 7B N=8 +5-8%; U6's instance, 80 registers instead
 * of 72: 1.5B b=1 1,206 / 1,197 -> 1,221 / 1,205). */
template <int T, int T2, int NT, bool ROPE, bool U4 = false, bool U6 = false>
static __global__ void __launch_bounds__(MVQ_WARPS * 32)
    mvq_kernel(struct mv_args a, struct xq_view x, int n, int wpr)
{
    griddep_launch();
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, sub = warp % wpr;
    struct seg_row me = find_row(a, blockIdx.x * (MVQ_WARPS / wpr) + warp / wpr);
    const bool writer = me.w && sub == 0, mine = writer && lane < n; /* lane = its token */
    float bv = 0.f, pv = 0.f;
    rope_at ra = {};
    if (ROPE && mine) {
        if (me.bias) bv = me.bias[me.r];
        ra = rope_pre(a.rope, me, lane);
    }
    /* (not in U4's instance without U6, where the extra registers cost more) */
    constexpr bool PRE = !ROPE && (!U4 || U6);
    const float *pre = PRE && a.add && mine ? me.y + (size_t)lane * me.N + me.r : nullptr;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++)
        acc[t] = 0.f;
    if (me.w && (T2 == T || me.type == T))
        row_dotq<T, NT, U4, U6>(me.w, x, n, acc, sub * 32 + lane, 32 * wpr, pre, pv);
    else if (me.w)
        row_dotq<T2, NT, U4, U6>(me.w, x, n, acc, sub * 32 + lane, 32 * wpr, pre, pv);
    wait_pre(pre, pv); /* (threads without units: before the writes) */
    rows_reduce<NT>(acc, wpr);
    if (ROPE) {
#pragma unroll
        for (int t = 0; t < NT; t++)
            if (me.w && me.bias) acc[t] += bv; /* lane t's is token t's */
        rope_epilogue<NT>(a, me, acc, n, warp / wpr, writer, ra);
        return;
    }
    if (!writer) return;
#pragma unroll
    for (int t = 0; t < NT; t++) {
        if (lane == t && t < n) {
            float v = acc[t];
            if (me.bias) v += me.bias[me.r];
            float *yp = me.y + (size_t)t * me.N + me.r;
            *yp = a.add ? (PRE ? pv : *yp) + v : v;
        }
    }
}

/* ag[t] += gate row wg . xg[t], au[t] += up row wu . xu[t] for rows of at
 * most one unit per lane: both loads issued before the wait (the sums of
 * two row_dotq calls). */
template <int T, int NT>
static __device__ __forceinline__ void rows_dotq2(const uint8_t *__restrict__ wg,
                                                  const uint8_t *__restrict__ wu,
                                                  const xq_view &xg, const xq_view &xu, int n,
                                                  float (&ag)[NT], float (&au)[NT], int lane)
{
    if (lane < xg.K / 32) {
        uraw rg, ru;
        unit_load<T>(wg + unit_off<T>(lane), lane & 7, rg);
        unit_load<T>(wu + unit_off<T>(lane), lane & 7, ru);
        griddep_wait();
        unit_dot<T, NT>(rg, xg, lane, n, ag);
        unit_dot<T, NT>(ru, xu, lane, n, au);
    }
}

/* The same for rows of at most two units per lane (lane, lane + step): the
 * four loads issued before the wait, instead of row_dotq's pairs of gate and
 * then of up, whose second pair loads after the wait (one memory round trip
 * instead of two). Each matrix's units are added as row_dotq's pairs add
 * them, so the bits are the same. */
template <int T, int NT>
static __device__ __forceinline__ void rows_dotq4(const uint8_t *__restrict__ wg,
                                                  const uint8_t *__restrict__ wu,
                                                  const xq_view &xg, const xq_view &xu, int n,
                                                  float (&ag)[NT], float (&au)[NT], int lane,
                                                  int step)
{
    const int nu = xg.K / 32;
    if (lane >= nu) return;
    const bool ok2 = lane + step < nu;
    const int u2 = ok2 ? lane + step : lane;
    uraw g1, g2, r1, r2;
    unit_load<T>(wg + unit_off<T>(lane), lane & 7, g1);
    unit_load<T>(wg + unit_off<T>(u2), u2 & 7, g2);
    unit_load<T>(wu + unit_off<T>(lane), lane & 7, r1);
    unit_load<T>(wu + unit_off<T>(u2), u2 & 7, r2);
    griddep_wait();
    unit_dot<T, NT>(g1, xg, lane, n, ag);
    if (ok2) unit_dot<T, NT>(g2, xg, u2, n, ag);
    unit_dot<T, NT>(r1, xu, lane, n, au);
    if (ok2) unit_dot<T, NT>(r2, xu, u2, n, au);
}

template <int T, int NT, bool QUAD>
static __global__ void __launch_bounds__(MVQ_WARPS * 32)
    swiglu_q_kernel(const uint8_t *wg, const uint8_t *wu, size_t rb, int N, struct xq_view xg,
                    struct xq_view xu, int n, int wpr, float *h)
{
    griddep_launch();
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, sub = warp % wpr;
    int row = blockIdx.x * (MVQ_WARPS / wpr) + warp / wpr;
    float ag[NT], au[NT];
#pragma unroll
    for (int t = 0; t < NT; t++)
        ag[t] = au[t] = 0.f;
    /* Gate and up together where a lane has one unit of each (short rows:
     * row_dotq would leave its second load slot empty and load up after the
     * wait) or two (QUAD); else one row after the other (7B at batch 1: 397
     * vs 384 tok/s).
     * The choice depends on the shape only, so a token's bits do not depend
     * on its batch; at batch 8 the pairs also beat gate and up one unit at a
     * time (1.5B 2,527 -> 2,621 tok/s, 7B 884 -> 923). */
    if (QUAD && row < N) {
        rows_dotq4<T, NT>(wg + (size_t)row * rb, wu + (size_t)row * rb, xg, xu, n, ag, au,
                          sub * 32 + lane, 32 * wpr);
    } else if (row < N && xg.K / 32 <= 32 * wpr) {
        rows_dotq2<T, NT>(wg + (size_t)row * rb, wu + (size_t)row * rb, xg, xu, n, ag, au,
                          sub * 32 + lane);
    } else if (row < N) {
        const float *none = nullptr;
        float nv;
        row_dotq<T, NT>(wg + (size_t)row * rb, xg, n, ag, sub * 32 + lane, 32 * wpr, none, nv);
        row_dotq<T, NT>(wu + (size_t)row * rb, xu, n, au, sub * 32 + lane, 32 * wpr, none, nv);
    }
    griddep_wait();
    rows_reduce<NT>(ag, wpr);
    rows_reduce<NT>(au, wpr);
    if (row >= N || sub != 0) return;
#pragma unroll
    for (int t = 0; t < NT; t++)
        if (lane == t && t < n) h[(size_t)t * N + row] = silu_mul(ag[t], au[t]);
}

/* Warps per row: more for long rows of few-row matrices (more loads in
 * flight), while each lane keeps at least 8 units, or 2 for matrices of at
 * most 1,024 rows (whose grid would leave most of the GPU idle: 0.5B down,
 * 896 x 4,864, 1,510 -> 1,577 tok/s; 2 everywhere cost 7B 1.5%). 8 rather
 * than 4: 1.5B's down (1,536 x 8,960) takes 2 warps a row, one wave of
 * blocks instead of 1.45 (b=1 1,060 -> 1,094 tok/s, N=8 2,620 -> 2,747). The choice
 * depends on the shape only, so a token's sum order does not depend on its
 * batch. */
static int mvq_wpr(int rows, int K)
{
    int wpr = 1, nu = K / 32, min_units = rows <= 1024 ? 2 : 8;
    while (wpr < MVQ_WARPS && (size_t)rows * wpr < 8192 && nu / (32 * wpr) >= min_units)
        wpr *= 2;
    return wpr;
}

/* f(std::integral_constant<int, NT>()) for the kernels' token count NT
 * (1, 2, 4 or 8) that takes n <= MATVEC_MAX_N tokens. */
template <typename F> static int by_tokens(int n, F f)
{
    if (n == 1) return f(std::integral_constant<int, 1>());
    if (n == 2) return f(std::integral_constant<int, 2>());
    if (n <= 4) return f(std::integral_constant<int, 4>());
    return f(std::integral_constant<int, 8>());
}

static bool view_ok(const struct mmq_act *x, int type, int K, const char *what)
{
    bool kq = mmq_class(type) == 4;
    if (x->cls != mmq_class(type) || x->K != K || x->n < 1 || x->n > MATVEC_MAX_N ||
        K % (kq ? 256 : 32) != 0) {
        log_error("cuda: %s: activations (class %d, K %d, %d tokens) do not fit type %d, K %d",
                  what, x->cls, x->K, x->n, type, K);
        return false;
    }
    return true;
}

static struct xq_view view(const struct mmq_act *x)
{
    struct xq_view v = {x->q, x->d, x->s, x->bsum, x->K};
    return v;
}

template <int T, int T2 = T>
static int mvq_launch(cudaStream_t st, const struct mv_args *a, int rows, const struct xq_view &x,
                      int n)
{
    int wpr = mvq_wpr(rows, a->K);
    /* rope pairs on adjacent rows of a block: one warp per row (the case the
     * ref-model tests run; the epilogue also takes 2) */
    if (a->rope.tab) wpr = 1;
    int rpb = MVQ_WARPS / wpr;
    unsigned grid = (unsigned)((rows + rpb - 1) / rpb);
    const bool rope = a->rope.tab != NULL;
    const bool u4 = !rope && a->K / 32 >= MVQ_U4_UNITS;
    /* a warp's first lane with 5 or 6 units loads them all at once (1.5B's
     * and 7B's down); the kernel's registers (72 instead of 61-63) are paid
     * only there (Llama-1B's down, 4 units a lane, lost 6% with them) */
    const int lane_units = (a->K / 32 + 32 * wpr - 1) / (32 * wpr);
    const bool u6 = u4 && lane_units >= 5 && lane_units <= 6;
    /* vocabulary-sized products of rows of 1 or 2 units a lane: two rows a warp */
    const bool r2 = !rope && rows >= 32768 && a->K / 32 <= 64;
    return by_tokens(n, [&](auto nt) -> int {
        constexpr int NT = decltype(nt)::value;
        if constexpr (NT == 1 && T2 == T) {
            if (r2) {
                CUDA_TRY(launch_pdl(a->K / 32 > 32 ? mvq_rows_kernel<T, NT, 2, true>
                                                   : mvq_rows_kernel<T, NT, 2, false>,
                                    (unsigned)((rows + 7) / 8), MVQ_WARPS * 32, 0, st, *a, x, n));
                return 0;
            }
            if (u4) {
                CUDA_TRY(launch_pdl(u6 ? mvq_kernel<T, T2, NT, false, true, true>
                                       : mvq_kernel<T, T2, NT, false, true>,
                                    grid, MVQ_WARPS * 32, 0, st, *a, x, n, wpr));
                return 0;
            }
        }
        CUDA_TRY(launch_pdl(rope ? mvq_kernel<T, T2, NT, true> : mvq_kernel<T, T2, NT, false>,
                            grid, MVQ_WARPS * 32, 0, st, *a, x, n, wpr));
        return 0;
    });
}

static int mvq_group(cudaStream_t st, int type, const struct mv_args *a, int rows,
                     const struct xq_view &x, int n)
{
    DISPATCH_QUANT(type, mvq_launch, st, a, rows, x, n);
}

/* The pairs of types one launch takes (Q4_K_M and Q5_K_M models give v, and
 * some layers' q/k, the larger type): 1 when launched, 0 if t0/t1 is not
 * one, or the launch's error. */
static int mvq_pair(cudaStream_t st, int t0, int t1, const struct mv_args *a, int rows,
                    const struct xq_view &x, int n)
{
#define MVQ_PAIR(A, B)                                                                             \
    if ((t0 == A && t1 == B) || (t0 == B && t1 == A)) {                                            \
        int r_ = mvq_launch<A, B>(st, a, rows, x, n);                                              \
        return r_ < 0 ? r_ : 1;                                                                    \
    }
    MVQ_PAIR(QT_Q5_0, QT_Q8_0);
    MVQ_PAIR(QT_Q4_0, QT_Q8_0);
    MVQ_PAIR(QT_Q4_K, QT_Q6_K);
    MVQ_PAIR(QT_Q5_K, QT_Q6_K);
    MVQ_PAIR(QT_Q5_0G, QT_Q8_0G);
    MVQ_PAIR(QT_Q4_0, QT_Q8_0G);
    MVQ_PAIR(QT_Q5_0, QT_Q8_0G);
    MVQ_PAIR(QT_Q4_K, QT_Q6_KG);
    MVQ_PAIR(QT_Q5_K, QT_Q6_KG);
#undef MVQ_PAIR
    return 0;
}

int k_mvq(cudaStream_t st, const struct mv_args *in, const struct mmq_act *xa)
{
    struct xq_view x = view(xa);
    struct mv_args a[3];
    int types[3], rows[3], ng = 0;
    /* segments grouped by type, in order */
    for (int i = 0; i < in->nseg; i++) {
        int type = in->seg[i].type, g = 0;
        if (!view_ok(xa, type, in->K, "mvq")) return ST_EINVAL;
        while (g < ng && types[g] != type)
            g++;
        if (g == ng) {
            a[g] = *in;
            a[g].nseg = 0;
            types[g] = type;
            rows[g] = 0;
            ng++;
        }
        a[g].seg[a[g].nseg] = in->seg[i];
        a[g].seg[a[g].nseg].rb = qt_row_bytes(type, in->K);
        a[g].nseg++;
        rows[g] += in->seg[i].N;
    }
    if (ng == 2) { /* one launch for both when the pair has a kernel */
        struct mv_args both = a[0];
        for (int j = 0; j < a[1].nseg; j++)
            both.seg[both.nseg++] = a[1].seg[j];
        int rc = mvq_pair(st, types[0], types[1], &both, rows[0] + rows[1], x, xa->n);
        if (rc < 0) return rc;
        if (rc == 1) return 0;
    }
    for (int g = 0; g < ng; g++)
        ST_TRY(mvq_group(st, types[g], &a[g], rows[g], x, xa->n));
    return 0;
}

template <int T>
static int swiglu_q_launch(cudaStream_t st, const void *wg, const void *wu, int N, int K,
                           const struct xq_view &xg, const struct xq_view &xu, int n, float *h)
{
    int wpr = mvq_wpr(N, K), rpb = MVQ_WARPS / wpr;
    unsigned grid = (unsigned)((N + rpb - 1) / rpb);
    const uint8_t *g = (const uint8_t *)wg, *u = (const uint8_t *)wu;
    size_t rb = qt_row_bytes(T, K);
    /* rows of two units per lane: 1.5B b=1 1,060 -> 1,128 tok/s with the
     * wpr rule's 8 units (one call, interleaved); the four loads spill at 8
     * tokens, which take the pairs (the same bits) */
    const bool quad = K / 32 > 32 * wpr && K / 32 <= 64 * wpr;
    return by_tokens(n, [&](auto nt) -> int {
        constexpr int NT = decltype(nt)::value;
        CUDA_TRY(launch_pdl(quad && NT < 8 ? swiglu_q_kernel<T, NT, NT < 8>
                                           : swiglu_q_kernel<T, NT, false>,
                            grid, MVQ_WARPS * 32, 0, st, g, u, rb, N, xg, xu, n, wpr, h));
        return 0;
    });
}

int k_swiglu_q(cudaStream_t st, const void *wg, const void *wu, int type, int N, int K,
               const struct mmq_act *xg, const struct mmq_act *xu, float *h)
{

    if (!view_ok(xg, type, K, "swiglu_q") || !view_ok(xu, type, K, "swiglu_q") || xg->n != xu->n)
        return ST_EINVAL;
    DISPATCH_QUANT(type, swiglu_q_launch, st, wg, wu, N, K, view(xg), view(xu), xg->n, h);
}
