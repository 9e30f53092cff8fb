// Tile-based Gaussian rasterizer for the CPU: binning, forward compositing and hand-written backward.
//
// Semantics follow docs/interfaces.md ("Rasterization contract") exactly, in float32. Two speed-ups keep the
// results identical to the contract:
//  * each Gaussian is only visited on the pixels of the axis-aligned box outside of which its alpha is provably
//    below 1/255 (such pixels would skip it anyway); tiles entirely outside that box are dropped from its list;
//  * a tile stops as soon as every one of its pixels has hit the transmittance stop.
// Per-Gaussian gradients are first written per (tile, Gaussian) pair, then summed per image in list order, so the
// backward pass is race-free and deterministic for any thread count.
//
// Both passes work on 4-pixel pieces of a tile row with branch-free vector arithmetic (masks instead of per-pixel
// branches, which mispredict on small Gaussians); the backward walks each tile's list back to front, recovering
// the transmittance in front of every Gaussian from the final one. Forward and backward evaluate alpha with the
// same float operations (exp_neg below; FMA contraction is off: -ffp-contract=off), so they always agree on which
// pairs composite. Without OpenMP (a compiler that does not take -fopenmp) the same code builds single-threaded.
#include <torch/extension.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int kTile = 16;
constexpr int kTilePixels = kTile * kTile;
constexpr float kAlphaMin = 1.0f / 255.0f;
constexpr float kAlphaMax = 0.99f;
constexpr float kTMin = 1e-4f;
constexpr int64_t kPrefetch = 8;  // list entries ahead: Gaussian records are visited in random memory order

#if defined(__GNUC__)
#define GSGAN_INLINE inline __attribute__((always_inline))
#else
#define GSGAN_INLINE inline
#endif

// 4 float / int32 lanes as GCC / clang vector types: one SSE register on x86-64, one NEON register on ARM, so
// every target has them natively and the results are the same IEEE operations per lane everywhere. Most
// Gaussians cover about 4 x 4 pixels of a tile, so wider vectors would mostly carry masked-out pixels.
constexpr int kLanes = 4;
typedef float Lanes __attribute__((vector_size(4 * kLanes)));
typedef int32_t LaneMask __attribute__((vector_size(4 * kLanes)));

GSGAN_INLINE Lanes select(LaneMask m, Lanes a, Lanes b) { return m ? a : b; }
GSGAN_INLINE LaneMask select(LaneMask m, LaneMask a, LaneMask b) { return m ? a : b; }
template <class V>
GSGAN_INLINE V load_lanes(const void* p) {  // memcpy: no alignment or aliasing assumptions, one vector load
  V v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <class V>
GSGAN_INLINE void store_lanes(void* p, V v) { std::memcpy(p, &v, sizeof(v)); }
GSGAN_INLINE Lanes bits_to_float(LaneMask v) { return load_lanes<Lanes>(&v); }
GSGAN_INLINE float lane_sum(Lanes v) { return (v[0] + v[2]) + (v[1] + v[3]); }  // fixed order: deterministic

// exp(-s) in plain float arithmetic (Cody-Waite reduction by ln 2, degree-7 polynomial, Cephes coefficients),
// within ~2 ulp of expf on [0, 87]; inputs are clamped to [-88, 87] (far beyond the 1/255 cut), NaN stays NaN.
// Plain arithmetic (no libm call) so that it vectorizes; forward and backward both use it.
GSGAN_INLINE Lanes exp_neg(Lanes s) {
  const Lanes zero{};
  Lanes x = -s;
  x = select(x > -87.0f, x, zero - 87.0f);  // NaN lands here too (comparison false); restored at the end
  x = select(x < 88.0f, x, zero + 88.0f);
  const Lanes n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln 2); |n| <= 127
  Lanes r = x - n * 0.693359375f;  // ln 2 split in two so that n * hi is exact
  r = r - n * -2.12194440e-4f;
  Lanes p = zero + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const Lanes e = p * (r * r) + r + 1.0f;
  const Lanes scale = bits_to_float((__builtin_convertvector(n, LaneMask) + 127) << 23);  // 2^n
  return select(s == s, e * scale, s);
}

// Half extents (in pixels) of the box that contains every pixel centre where alpha >= 1/255 may hold.
// Returns 0 when the Gaussian can never reach alpha >= 1/255, 1 when (hx, hy) is a valid box, 2 when no finite
// box can be trusted (degenerate or non-finite parameters): then the whole tile rectangle is visited.
inline int alpha_extent(float o, float a, float b, float c, float& hx, float& hy, float& s_cut) {
  s_cut = INFINITY;
  if (o != o) return 2;
  if (o < kAlphaMin) return 0;  // alpha <= o * exp(-sigma) <= o for sigma >= 0 (sigma < 0 is skipped)
  const float det = a * c - b * b;
  if (!(a > 0.0f && c > 0.0f && det > 1e-3f * a * c)) return 2;
  // sigma = 0.5 d^T M d <= s_max = log(255 o) is required; its x extent is sqrt(2 s_max (M^-1)_xx).
  const float s_max = std::log(255.0f * o) * 1.001f + 1e-3f;
  s_cut = s_max;  // beyond it alpha < 1/255 with a relative margin of 1e-3, far above rounding errors
  hx = std::sqrt(2.0f * s_max * c / det) * 1.001f + 0.01f;
  hy = std::sqrt(2.0f * s_max * a / det) * 1.001f + 0.01f;
  if (!(std::isfinite(hx) && std::isfinite(hy))) return 2;
  return 1;
}

inline int clamp_to_int(float v, int hi) {  // NaN-safe clamp to [0, hi] before the integer conversion
  if (!(v > 0.0f)) return 0;
  if (v > static_cast<float>(hi)) return hi;
  return static_cast<int>(v);
}

// Pixel index range [lo, hi] (inclusive, clamped to [lo_clip, hi_clip]) whose centres lie within m +- h; empty
// (lo > hi) when none does. NaN-safe: every comparison with NaN falls through to the clip value.
inline void pixel_range(float m, float h, int lo_clip, int hi_clip, int& lo, int& hi) {
  const float flo = std::ceil(m - h - 0.5f), fhi = std::floor(m + h - 0.5f);
  const float lo_min = static_cast<float>(lo_clip), lo_max = static_cast<float>(hi_clip + 1);
  const float hi_min = static_cast<float>(lo_clip - 1), hi_max = static_cast<float>(hi_clip);
  lo = flo > lo_min ? (flo > lo_max ? hi_clip + 1 : static_cast<int>(flo)) : lo_clip;
  hi = fhi < hi_max ? (fhi < hi_min ? lo_clip - 1 : static_cast<int>(fhi)) : hi_clip;
}

// Total order on float depths for sorting (NaN last for positive NaN), -0 treated as +0.
inline uint32_t sortable_bits(float d) {
  if (d == 0.0f) d = 0.0f;
  uint32_t u;
  std::memcpy(&u, &d, sizeof(u));
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Per-Gaussian record, packed so that one visit touches one cache line: mean, conic, opacity, the alpha box
// (hx < 0: visit the whole tile), the sigma cut and the D features.
constexpr int kMx = 0, kMy = 1, kA = 2, kB = 3, kC = 4, kO = 5, kHx = 6, kHy = 7, kScut = 8, kFeat = 9;
inline int64_t record_stride(int64_t D) { return kFeat + D <= 16 ? 16 : kFeat + D; }

struct Binned {
  torch::Tensor offsets;  // int64 [I * tiles + 1], global offsets into ids
  torch::Tensor ids;      // int32 [pairs], Gaussian index within its image
  torch::Tensor records;  // float [I, N, stride] packed per-Gaussian data (see kMx...)
};

Binned bin_gaussians(const torch::Tensor& means2d, const torch::Tensor& conics, const torch::Tensor& feats,
                     const torch::Tensor& opacities, const torch::Tensor& depths, const torch::Tensor& radii,
                     int width, int height, int threads) {
  const int64_t I = means2d.size(0), N = means2d.size(1), D = feats.size(2), R = record_stride(D);
  const int tiles_x = (width + kTile - 1) / kTile, tiles_y = (height + kTile - 1) / kTile;
  const int64_t tiles = static_cast<int64_t>(tiles_x) * tiles_y;
  const float* m = means2d.data_ptr<float>();
  const float* cn = conics.data_ptr<float>();
  const float* ft = feats.data_ptr<float>();
  const float* op = opacities.data_ptr<float>();
  const float* dp = depths.data_ptr<float>();
  const int32_t* rd = radii.data_ptr<int32_t>();

  torch::Tensor records = torch::zeros({I, N, R}, means2d.options());
  float* rec_all = records.data_ptr<float>();
  std::vector<std::vector<uint64_t>> keys(I);
  std::vector<std::vector<int32_t>> rects(I);
  std::vector<std::vector<int64_t>> counts(I);
  std::vector<int64_t> image_pairs(I, 0);

#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int64_t img = 0; img < I; ++img) {
    std::vector<uint64_t>& key = keys[img];
    std::vector<int32_t>& rect = rects[img];
    std::vector<int64_t>& count = counts[img];
    rect.assign(4 * N, 0);
    count.assign(tiles, 0);
    for (int64_t g = 0; g < N; ++g) {
      const int64_t gi = img * N + g;
      const int32_t r = rd[gi];
      if (r <= 0) continue;
      const float mx = m[2 * gi], my = m[2 * gi + 1], rf = static_cast<float>(r);
      float* rec = rec_all + gi * R;
      rec[kMx] = mx; rec[kMy] = my;
      rec[kA] = cn[3 * gi]; rec[kB] = cn[3 * gi + 1]; rec[kC] = cn[3 * gi + 2];
      rec[kO] = op[gi];
      rec[kHx] = rec[kHy] = -1.0f;
      for (int64_t d = 0; d < D; ++d) rec[kFeat + d] = ft[gi * D + d];
      int x0 = clamp_to_int(std::floor((mx - rf) / 16.0f), tiles_x);
      int x1 = clamp_to_int(std::ceil((mx + rf) / 16.0f), tiles_x);
      int y0 = clamp_to_int(std::floor((my - rf) / 16.0f), tiles_y);
      int y1 = clamp_to_int(std::ceil((my + rf) / 16.0f), tiles_y);
      float hx = 0.0f, hy = 0.0f, s_cut = 0.0f;
      const int mode = alpha_extent(op[gi], cn[3 * gi], cn[3 * gi + 1], cn[3 * gi + 2], hx, hy, s_cut);
      if (mode == 0) continue;
      rec[kScut] = s_cut;
      if (mode == 1) {
        rec[kHx] = hx;
        rec[kHy] = hy;
        int px0, px1, py0, py1;
        pixel_range(mx, hx, 0, width - 1, px0, px1);
        pixel_range(my, hy, 0, height - 1, py0, py1);
        if (px0 > px1 || py0 > py1) continue;
        x0 = std::max(x0, px0 / kTile);
        x1 = std::min(x1, px1 / kTile + 1);
        y0 = std::max(y0, py0 / kTile);
        y1 = std::min(y1, py1 / kTile + 1);
      }
      if (x0 >= x1 || y0 >= y1) continue;
      rect[4 * g] = x0; rect[4 * g + 1] = x1; rect[4 * g + 2] = y0; rect[4 * g + 3] = y1;
      key.push_back((static_cast<uint64_t>(sortable_bits(dp[gi])) << 32) | static_cast<uint64_t>(g));
      for (int ty = y0; ty < y1; ++ty)
        for (int tx = x0; tx < x1; ++tx) ++count[static_cast<int64_t>(ty) * tiles_x + tx];
    }
    std::sort(key.begin(), key.end());  // ascending depth, ties by ascending index
    int64_t total = 0;
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t c = count[t];
      count[t] = total;
      total += c;
    }
    image_pairs[img] = total;
  }

  std::vector<int64_t> base(I + 1, 0);
  for (int64_t img = 0; img < I; ++img) base[img + 1] = base[img] + image_pairs[img];
  torch::Tensor offsets = torch::empty({I * tiles + 1}, torch::dtype(torch::kInt64));
  torch::Tensor ids = torch::empty({base[I]}, torch::dtype(torch::kInt32));
  int64_t* off = offsets.data_ptr<int64_t>();
  int32_t* id = ids.data_ptr<int32_t>();
  off[I * tiles] = base[I];

#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int64_t img = 0; img < I; ++img) {
    std::vector<int64_t>& cursor = counts[img];  // per-tile start offsets within the image
    for (int64_t t = 0; t < tiles; ++t) off[img * tiles + t] = base[img] + cursor[t];
    const std::vector<int32_t>& rect = rects[img];
    for (const uint64_t k : keys[img]) {
      const int32_t g = static_cast<int32_t>(k & 0xffffffffu);
      for (int ty = rect[4 * g + 2]; ty < rect[4 * g + 3]; ++ty)
        for (int tx = rect[4 * g]; tx < rect[4 * g + 1]; ++tx)
          id[base[img] + cursor[static_cast<int64_t>(ty) * tiles_x + tx]++] = g;
    }
    std::vector<uint64_t>().swap(keys[img]);
    std::vector<int32_t>().swap(rects[img]);
    std::vector<int64_t>().swap(counts[img]);
  }
  return {offsets, ids, records};
}

// Pixel box of Gaussian (mx, my) with extents inside the tile [x0, x1) x [y0, y1); empty when lo > hi.
inline void tile_box(float mx, float my, float hx, float hy, int x0, int x1, int y0, int y1, int& bx0, int& bx1,
                     int& by0, int& by1) {
  if (hx < 0.0f) {
    bx0 = x0; bx1 = x1 - 1; by0 = y0; by1 = y1 - 1;
    return;
  }
  pixel_range(mx, hx, x0, x1 - 1, bx0, bx1);
  pixel_range(my, hy, y0, y1 - 1, by0, by1);
}

// The 4-pixel pieces [p0, p1] of a tile row that the box [bx0, bx1] touches, with each piece's x offsets from
// the Gaussian's centre and its in-box mask (1.0 / 0.0). Shared by forward and backward: same dx bit for bit.
struct RowPieces {
  int p0, p1;
  Lanes dx[kTile / kLanes], in_x[kTile / kLanes];
};

GSGAN_INLINE void row_pieces(float mx, int x0, int bx0, int bx1, RowPieces& r) {
  const Lanes zero{}, one = zero + 1.0f;
  r.p0 = (bx0 - x0) / kLanes;
  r.p1 = (bx1 - x0) / kLanes;
  const Lanes lo = zero + static_cast<float>(bx0 - x0), hi = zero + static_cast<float>(bx1 - x0);
  for (int q = r.p0; q <= r.p1; ++q) {
    Lanes lx, px;
    for (int l = 0; l < kLanes; ++l) {
      lx[l] = static_cast<float>(q * kLanes + l);
      px[l] = static_cast<float>(x0 + q * kLanes + l) + 0.5f;  // pixel centres
    }
    r.dx[q] = mx - px;
    r.in_x[q] = select(lx >= lo, select(lx <= hi, one, zero), zero);
  }
}

// Front-to-back compositing, 4 pixels of a row at a time (masks as in backward_tile: 1.0 / 0.0 floats, each
// comparison feeding a select).
template <int DC>
void forward_tiles(int64_t I, int64_t N, int64_t Drt, int width, int height, int threads, const float* records,
                   const int64_t* off, const int32_t* id, float* out, float* alpha_out, float* t_final,
                   int32_t* last_out) {
  const int D = DC > 0 ? DC : static_cast<int>(Drt);
  const int64_t R = record_stride(D);
  const int tiles_x = (width + kTile - 1) / kTile, tiles_y = (height + kTile - 1) / kTile;
  const int64_t tiles = static_cast<int64_t>(tiles_x) * tiles_y;
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> acc(static_cast<size_t>(kTilePixels) * D);  // [D][256], one plane per feature
    alignas(16) float T[kTilePixels];
    alignas(16) float done[kTilePixels];  // 1.0 once the pixel hit the transmittance stop
    alignas(16) int32_t last[kTilePixels];
    RowPieces pieces;
    const Lanes zero{}, t_min = zero + kTMin, alpha_min = zero + kAlphaMin, alpha_max = zero + kAlphaMax;
#pragma omp for schedule(dynamic, 1)
    for (int64_t job = 0; job < I * tiles; ++job) {
      const int64_t img = job / tiles, tile = job % tiles;
      const int x0 = static_cast<int>(tile % tiles_x) * kTile, y0 = static_cast<int>(tile / tiles_x) * kTile;
      const int x1 = std::min(x0 + kTile, width), y1 = std::min(y0 + kTile, height);
      std::fill(acc.begin(), acc.end(), 0.0f);
      std::fill(T, T + kTilePixels, 1.0f);
      std::fill(last, last + kTilePixels, 0);
      std::fill(done, done + kTilePixels, 0.0f);
      int active = (x1 - x0) * (y1 - y0);
      const int64_t kb = off[job], ke = off[job + 1];
      for (int64_t k = kb; k < ke && active > 0; ++k) {
        if (k + kPrefetch < ke) __builtin_prefetch(records + (img * N + id[k + kPrefetch]) * R);
        const float* rec = records + (img * N + id[k]) * R;
        const float mx = rec[kMx], my = rec[kMy], a = rec[kA], b = rec[kB], c = rec[kC], o = rec[kO];
        const float* f = rec + kFeat;
        int bx0, bx1, by0, by1;
        tile_box(mx, my, rec[kHx], rec[kHy], x0, x1, y0, y1, bx0, bx1, by0, by1);
        if (bx0 > bx1 || by0 > by1) continue;
        row_pieces(mx, x0, bx0, bx1, pieces);
        const LaneMask rank = LaneMask{} + static_cast<int32_t>(k - kb + 1);
        const Lanes cut = zero + rec[kScut];
        Lanes stopped = zero;
        for (int y = by0; y <= by1; ++y) {
          const float dy = my - (static_cast<float>(y) + 0.5f);
          for (int q = pieces.p0; q <= pieces.p1; ++q) {
            const int at = (y - y0) * kTile + q * kLanes;
            const Lanes dx = pieces.dx[q];
            const Lanes Tp = load_lanes<Lanes>(T + at), dn = load_lanes<Lanes>(done + at);
            const Lanes sigma = 0.5f * (a * dx * dx + c * dy * dy) + b * dx * dy;
            const Lanes raw = o * exp_neg(sigma);
            const Lanes alpha = select(raw > alpha_max, alpha_max, raw);
            Lanes gate = select(dn != zero, zero, pieces.in_x[q]);
            gate = select(sigma < zero, zero, gate);
            gate = select(sigma > cut, zero, gate);  // the cut only skips pixels with alpha < 1/255
            gate = select(alpha < alpha_min, zero, gate);
            const Lanes t_next = Tp * (1.0f - alpha);
            const Lanes stop = select(t_next < t_min, gate, zero);
            const Lanes composite = gate - stop;
            const Lanes w = alpha * Tp;
            for (int d = 0; d < D; ++d) {
              float* ap = acc.data() + d * kTilePixels + at;
              store_lanes(ap, load_lanes<Lanes>(ap) + select(composite != zero, f[d] * w, zero));
            }
            store_lanes(T + at, select(composite != zero, t_next, Tp));
            store_lanes(done + at, dn + stop);
            store_lanes(last + at, select(composite != zero, rank, load_lanes<LaneMask>(last + at)));
            stopped += stop;
          }
        }
        active -= static_cast<int>(lane_sum(stopped));
      }
      for (int y = y0; y < y1; ++y)
        for (int x = x0; x < x1; ++x) {
          const int p = (y - y0) * kTile + (x - x0);
          const int64_t pix = (img * height + y) * width + x;
          for (int d = 0; d < D; ++d) out[pix * D + d] = acc[static_cast<size_t>(d) * kTilePixels + p];
          alpha_out[pix] = 1.0f - T[p];
          t_final[pix] = T[p];
          last_out[pix] = last[p];
        }
    }
  }
}

// Everything one backward tile needs; shared read-only by all threads.
struct BackwardArgs {
  int64_t N, D, R;
  int width, height, tiles_x;
  int64_t tiles;
  const float* records;
  const int64_t* off;
  const int32_t* id;
  const float* t_final;
  const int32_t* last;
  const float* g_out;
  const float* g_alpha;
  float* pair_grad;  // [pairs, 6 + D]: d mean (2), d conic (3), d opacity, d feats (D)
};

// Per-thread scratch of one tile, one slot per pixel (row-major, 16 per row).
struct BackwardScratch {
  explicit BackwardScratch(int64_t D) : go(static_cast<size_t>(kTilePixels) * D), feat_acc(D) {}
  alignas(16) float T[kTilePixels];     // transmittance behind the Gaussian being visited, walked to the front
  alignas(16) float rest[kTilePixels];  // dL/dalpha_out * T_final - sum over the Gaussians behind of w <go, f>
  alignas(16) int32_t last[kTilePixels];  // forward's rank of the last composited Gaussian (0: none)
  std::vector<float> go;        // [D][256] output gradient, one plane per feature
  std::vector<Lanes> feat_acc;  // per-lane d feats when D is not a compile-time constant
};

// Reverse compositing of one tile. For pixel p and the Gaussian k (alpha_k, weight w_k = alpha_k T_k, features
// f_k) the contract gives dL/dalpha_k = T_k <go_p, f_k> - (ga_p T_final + sum_{j behind k} w_j <go_p, f_j>) /
// (1 - alpha_k) with go_p, ga_p the output gradients; `rest` carries the bracket as one scalar per pixel.
template <int DC>
void backward_tile(const BackwardArgs& A, int64_t job, BackwardScratch& s) {
  const int D = DC > 0 ? DC : static_cast<int>(A.D);
  const int G = 6 + D;
  const int64_t img = job / A.tiles, tile = job % A.tiles;
  const int x0 = static_cast<int>(tile % A.tiles_x) * kTile, y0 = static_cast<int>(tile / A.tiles_x) * kTile;
  const int x1 = std::min(x0 + kTile, A.width), y1 = std::min(y0 + kTile, A.height);
  const int64_t kb = A.off[job], ke = A.off[job + 1];
  float* go = s.go.data();
  // Saved-state reload; pixels outside the image get last = 0 (never composite) and zero gradients.
  int32_t kmax = 0;
  std::fill(s.T, s.T + kTilePixels, 1.0f);
  std::fill(s.rest, s.rest + kTilePixels, 0.0f);
  std::fill(s.last, s.last + kTilePixels, 0);
  std::fill(go, go + static_cast<size_t>(kTilePixels) * D, 0.0f);
  for (int y = y0; y < y1; ++y)
    for (int x = x0; x < x1; ++x) {
      const int p = (y - y0) * kTile + (x - x0);
      const int64_t pix = (img * A.height + y) * A.width + x;
      const float tf = A.t_final[pix];
      s.T[p] = tf;
      s.rest[p] = A.g_alpha[pix] * tf;
      s.last[p] = A.last[pix];
      kmax = std::max(kmax, A.last[pix]);
      for (int d = 0; d < D; ++d) go[d * kTilePixels + p] = A.g_out[pix * D + d];
    }
  if (kb + kmax < ke) std::memset(A.pair_grad + (kb + kmax) * G, 0, sizeof(float) * G * (ke - kb - kmax));
  const Lanes zero{}, alpha_min = zero + kAlphaMin, alpha_max = zero + kAlphaMax;
  Lanes fixed_acc[DC > 0 ? DC : 1];
  Lanes* acc_f = DC > 0 ? fixed_acc : s.feat_acc.data();
  RowPieces pieces;
  for (int64_t k = kb + kmax - 1; k >= kb; --k) {
    if (k - kPrefetch >= kb) __builtin_prefetch(A.records + (img * A.N + A.id[k - kPrefetch]) * A.R);
    const float* rec = A.records + (img * A.N + A.id[k]) * A.R;
    const float mx = rec[kMx], my = rec[kMy], a = rec[kA], b = rec[kB], c = rec[kC], o = rec[kO];
    const float* f = rec + kFeat;
    int bx0, bx1, by0, by1;
    tile_box(mx, my, rec[kHx], rec[kHy], x0, x1, y0, y1, bx0, bx1, by0, by1);
    float* pg = A.pair_grad + k * G;
    if (bx0 > bx1 || by0 > by1) {
      std::fill(pg, pg + G, 0.0f);
      continue;
    }
    row_pieces(mx, x0, bx0, bx1, pieces);
    // Masks are 1.0 / 0.0 floats and each comparison feeds a select directly: the form every target compiles to
    // vector compares and blends (masks combined with & / | get split into scalar code by some compilers).
    const LaneMask rank = LaneMask{} + static_cast<int32_t>(k - kb);
    const Lanes cut = zero + rec[kScut];
    Lanes acc_mx = zero, acc_my = zero, acc_a = zero, acc_b = zero, acc_c = zero, acc_o = zero;
    for (int d = 0; d < D; ++d) acc_f[d] = zero;
    for (int y = by0; y <= by1; ++y) {
      const float dy = my - (static_cast<float>(y) + 0.5f);
      for (int q = pieces.p0; q <= pieces.p1; ++q) {
        const int at = (y - y0) * kTile + q * kLanes;
        const Lanes dx = pieces.dx[q];
        const Lanes T = load_lanes<Lanes>(s.T + at), rest = load_lanes<Lanes>(s.rest + at);
        const Lanes sigma = 0.5f * (a * dx * dx + c * dy * dy) + b * dx * dy;  // as in forward_tiles
        const Lanes gauss = exp_neg(sigma);
        const Lanes raw = o * gauss;
        const Lanes alpha = select(raw > alpha_max, alpha_max, raw);
        Lanes gate = select(rank < load_lanes<LaneMask>(s.last + at), pieces.in_x[q], zero);
        gate = select(sigma < zero, zero, gate);  // the forward's tests, NaN included (it keeps the pixel)
        gate = select(sigma > cut, zero, gate);
        gate = select(alpha < alpha_min, zero, gate);
        const Lanes inv = 1.0f / (1.0f - alpha);
        const Lanes tk = T * inv;  // transmittance in front of this Gaussian
        const Lanes w = alpha * tk;
        Lanes gdotf = zero;
        for (int d = 0; d < D; ++d) gdotf += load_lanes<Lanes>(go + d * kTilePixels + at) * f[d];
        const Lanes d_alpha = tk * gdotf + inv * rest;
        store_lanes(s.T + at, select(gate != zero, tk, T));
        store_lanes(s.rest + at, select(gate != zero, rest - gdotf * w, rest));
        const Lanes w_live = select(gate != zero, w, zero);
        for (int d = 0; d < D; ++d) acc_f[d] += w_live * load_lanes<Lanes>(go + d * kTilePixels + at);
        // clamp(max=0.99): no gradient above the bound
        const Lanes da = select(raw <= alpha_max, select(gate != zero, d_alpha, zero), zero);
        const Lanes d_sigma = -da * raw;
        acc_o += da * gauss;
        acc_a += 0.5f * d_sigma * dx * dx;
        acc_b += d_sigma * dx * dy;
        acc_c += 0.5f * d_sigma * dy * dy;
        acc_mx += d_sigma * (a * dx + b * dy);
        acc_my += d_sigma * (b * dx + c * dy);
      }
    }
    pg[0] = lane_sum(acc_mx); pg[1] = lane_sum(acc_my);
    pg[2] = lane_sum(acc_a); pg[3] = lane_sum(acc_b); pg[4] = lane_sum(acc_c);
    pg[5] = lane_sum(acc_o);
    for (int d = 0; d < D; ++d) pg[6 + d] = lane_sum(acc_f[d]);
  }
}

template <int DC>
void backward_tiles(int64_t I, const BackwardArgs& A, int threads) {
#pragma omp parallel num_threads(threads)
  {
    BackwardScratch scratch(A.D);
#pragma omp for schedule(dynamic, 1)
    for (int64_t job = 0; job < I * A.tiles; ++job) backward_tile<DC>(A, job, scratch);
  }
}

void check_inputs(const torch::Tensor& means2d, const torch::Tensor& conics, const torch::Tensor& feats,
                  const torch::Tensor& opacities, const torch::Tensor& radii) {
  TORCH_CHECK(means2d.is_contiguous() && conics.is_contiguous() && feats.is_contiguous() &&
                  opacities.is_contiguous() && radii.is_contiguous(),
              "rasterize_cpu: inputs must be contiguous");
  TORCH_CHECK(means2d.scalar_type() == torch::kFloat32 && conics.scalar_type() == torch::kFloat32 &&
                  feats.scalar_type() == torch::kFloat32 && opacities.scalar_type() == torch::kFloat32,
              "rasterize_cpu: float inputs must be float32");
  TORCH_CHECK(radii.scalar_type() == torch::kInt32, "rasterize_cpu: radii must be int32");
}

std::vector<torch::Tensor> forward(torch::Tensor means2d, torch::Tensor conics, torch::Tensor feats,
                                   torch::Tensor opacities, torch::Tensor depths, torch::Tensor radii, int64_t width,
                                   int64_t height, int64_t threads) {
  check_inputs(means2d, conics, feats, opacities, radii);
  TORCH_CHECK(depths.is_contiguous() && depths.scalar_type() == torch::kFloat32, "rasterize_cpu: bad depths");
  TORCH_CHECK(width > 0 && height > 0 && threads > 0, "rasterize_cpu: width, height and threads must be > 0");
  const int64_t I = means2d.size(0), N = means2d.size(1), D = feats.size(2);
  const int W = static_cast<int>(width), H = static_cast<int>(height), nt = static_cast<int>(threads);
  Binned bins = bin_gaussians(means2d, conics, feats, opacities, depths, radii, W, H, nt);
  auto fopt = means2d.options();
  torch::Tensor out = torch::empty({I, H, W, D}, fopt);
  torch::Tensor alpha = torch::empty({I, H, W, 1}, fopt);
  torch::Tensor t_final = torch::empty({I, H, W}, fopt);
  torch::Tensor last = torch::empty({I, H, W}, torch::dtype(torch::kInt32));
#define GSGAN_FWD(DC)                                                                                             \
  forward_tiles<DC>(I, N, D, W, H, nt, bins.records.data_ptr<float>(), bins.offsets.data_ptr<int64_t>(),        \
                    bins.ids.data_ptr<int32_t>(), out.data_ptr<float>(), alpha.data_ptr<float>(),                \
                    t_final.data_ptr<float>(), last.data_ptr<int32_t>())
  if (D == 3) GSGAN_FWD(3);
  else if (D == 4) GSGAN_FWD(4);
  else if (D == 1) GSGAN_FWD(1);
  else GSGAN_FWD(0);
#undef GSGAN_FWD
  return {out, alpha, t_final, last, bins.offsets, bins.ids, bins.records};
}

std::vector<torch::Tensor> backward(torch::Tensor records, torch::Tensor offsets, torch::Tensor ids,
                                    torch::Tensor t_final, torch::Tensor last, torch::Tensor grad_out,
                                    torch::Tensor grad_alpha, int64_t feat_dim, int64_t width, int64_t height,
                                    int64_t threads) {
  TORCH_CHECK(grad_out.is_contiguous() && grad_alpha.is_contiguous() && grad_out.scalar_type() == torch::kFloat32 &&
                  grad_alpha.scalar_type() == torch::kFloat32,
              "rasterize_cpu: output gradients must be contiguous float32");
  TORCH_CHECK(records.is_contiguous() && records.dim() == 3 && records.size(2) == record_stride(feat_dim),
              "rasterize_cpu: bad saved records");
  const int64_t I = records.size(0), N = records.size(1), D = feat_dim;
  TORCH_CHECK(grad_out.numel() == I * height * width * D && grad_alpha.numel() == I * height * width,
              "rasterize_cpu: output gradients have the wrong size");
  const int W = static_cast<int>(width), H = static_cast<int>(height), nt = static_cast<int>(threads);
  const int64_t tiles = static_cast<int64_t>((W + kTile - 1) / kTile) * ((H + kTile - 1) / kTile);
  const int64_t G = 6 + D;
  torch::Tensor pair_grad = torch::empty({ids.size(0), G}, records.options());
  const BackwardArgs args{N, D, record_stride(D), W, H, (W + kTile - 1) / kTile, tiles,
                          records.data_ptr<float>(), offsets.data_ptr<int64_t>(), ids.data_ptr<int32_t>(),
                          t_final.data_ptr<float>(), last.data_ptr<int32_t>(), grad_out.data_ptr<float>(),
                          grad_alpha.data_ptr<float>(), pair_grad.data_ptr<float>()};
  if (D == 3) backward_tiles<3>(I, args, nt);
  else if (D == 4) backward_tiles<4>(I, args, nt);
  else if (D == 1) backward_tiles<1>(I, args, nt);
  else backward_tiles<0>(I, args, nt);
  auto fopt = records.options();
  torch::Tensor g_means = torch::zeros({I, N, 2}, fopt), g_conics = torch::zeros({I, N, 3}, fopt);
  torch::Tensor g_opac = torch::zeros({I, N}, fopt), g_feats = torch::zeros({I, N, D}, fopt);
  float *gm = g_means.data_ptr<float>(), *gc = g_conics.data_ptr<float>(), *go = g_opac.data_ptr<float>(),
        *gf = g_feats.data_ptr<float>();
  const float* pg = pair_grad.data_ptr<float>();
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int32_t* id = ids.data_ptr<int32_t>();
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t img = 0; img < I; ++img) {  // fixed summation order: deterministic
    for (int64_t k = off[img * tiles]; k < off[(img + 1) * tiles]; ++k) {
      const int64_t gi = img * N + id[k];
      const float* p = pg + k * G;
      gm[2 * gi] += p[0]; gm[2 * gi + 1] += p[1];
      gc[3 * gi] += p[2]; gc[3 * gi + 1] += p[3]; gc[3 * gi + 2] += p[4];
      go[gi] += p[5];
      for (int64_t d = 0; d < D; ++d) gf[gi * D + d] += p[6 + d];
    }
  }
  return {g_means, g_conics, g_feats, g_opac};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "gsgan tile-based CPU Gaussian rasterizer (forward + hand-written backward)";
  module.def("forward", &forward, "rasterize: returns out, alpha, t_final, last, offsets, ids, records",
             py::call_guard<py::gil_scoped_release>());
  module.def("backward", &backward, "gradients w.r.t. means2d, conics, feats, opacities",
             py::call_guard<py::gil_scoped_release>());
  module.def("openmp", [] {
#ifdef _OPENMP
    return true;
#else
    return false;
#endif
  }, "whether this build is multi-threaded (compiled with OpenMP)");
}
