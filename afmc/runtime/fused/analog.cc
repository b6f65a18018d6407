// Fused analog kernels for onnxruntime: a custom-op library, domain "afmc.kernels".
//
// The stock bodies of afmc's analog nodes (afmc/ops/analog_linear_onnx.py, sliced_function)
// run the DAC as three element-wise ops (Mul, Clip, Round) and the ADC as three to six
// per slice (RandomNormalLike, Mul, Add, Round, Clip, Mul) plus a Sum. These kernels do
// each in one pass, with the same float32 operations in the same order, so without
// read noise their output is bit-identical to the stock body:
//
//   AnalogDAC(X, in_scale_cols, h_in[, pre_scale]) -> Q_0, ..., Q_{n-1}
//       q = nearbyint(min(max(x * s, -h_in), h_in)) for each column, written straight
//       into the n equal slices of the last axis (the stock body's Split); with
//       pre_scale [K], x = X * pre_scale first (a per-column Mul before the node).
//   AnalogADC(h_out, Z_0, ..., Z_{n-1}, out_step_0, ..., out_step_{n-1}) -> Y
//       y = sum over s of min(max(nearbyint(z_s), -h_out), h_out) * out_step_s,
//       summed left to right as onnxruntime's Sum does.
//   NoisyAnalogADC(h_out, noise_std, Z_0, ..., out_step_0, ...) -> Y
//       the same on z_s + noise_std * N(0, 1), the noise fresh on every run.
//
// nearbyintf under the default rounding mode rounds half to even, as ONNX Round. Build
// with -ffp-contract=off: a fused multiply-add would change the last bit of the sum.
//
// Read noise: every kernel (one per node) draws a 64-bit seed from std::random_device
// when it is created and counts its runs; run c, chunk t draws from its own xoshiro128++
// streams keyed by (seed, c, t), so the noise is fresh per run, independent across
// chunks, and the same whichever thread runs a chunk. Normals come from Box-Muller on
// 8 streams at once (polynomial log and sin/cos, relative error below 1e-7), which the
// compiler vectorises.
//
// There are no onnxruntime headers here: the declarations below mirror the parts of
// onnxruntime's public C API (include/onnxruntime/core/session/onnxruntime_c_api.h)
// that this file uses. OrtApi is a table of function pointers that only ever grows;
// the slot numbers are positions in it, valid from the API version requested below.

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <limits>
#include <vector>

namespace {

// ---------------------------------------------------------------- onnxruntime C ABI

struct OrtStatus;
struct OrtValue;
struct OrtKernelInfo;
struct OrtKernelContext;
struct OrtTypeShape;  // OrtTensorTypeAndShapeInfo
struct OrtSessionOptions;
struct OrtCustomOpDomain;
struct OrtApi;  // the function table, read through slot()

// Mirrors OrtApiBase.
struct ApiBase {
  const OrtApi* (*GetApi)(uint32_t version);
  const char* (*GetVersionString)();
};

// The OrtApi version whose table holds every slot used here (KernelContext_ParallelFor
// arrived in 17); GetApi returns NULL from an older runtime.
constexpr uint32_t kApiVersion = 17;

// Positions of the OrtApi members used here.
enum Slot : size_t {
  kCreateStatus = 0,
  kCreateCustomOpDomain = 26,
  kCustomOpDomainAdd = 27,
  kAddCustomOpDomain = 28,
  kGetTensorMutableData = 51,
  kGetDimensionsCount = 61,
  kGetDimensions = 62,
  kGetTensorShapeElementCount = 64,
  kGetTensorTypeAndShape = 65,
  kKernelContextGetInputCount = 88,
  kKernelContextGetOutputCount = 89,
  kKernelContextGetInput = 90,
  kKernelContextGetOutput = 91,
  kReleaseTensorTypeAndShapeInfo = 99,
  kKernelContextParallelFor = 274,
};

constexpr int kErrorInvalidArgument = 2;  // OrtErrorCode ORT_INVALID_ARGUMENT
constexpr int kFloat = 1;                 // ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT
constexpr int kInt64 = 7;                 // ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64
constexpr int kRequired = 0;              // OrtCustomOpInputOutputCharacteristic
constexpr int kOptional = 1;
constexpr int kVariadic = 2;
constexpr int kMemDefault = 0;            // OrtMemTypeDefault

// Mirrors OrtCustomOp up to ReleaseAliasMap (the members of its version 18).
struct CustomOp {
  uint32_t version;
  void* (*CreateKernel)(const CustomOp*, const OrtApi*, const OrtKernelInfo*);
  const char* (*GetName)(const CustomOp*);
  const char* (*GetExecutionProviderType)(const CustomOp*);
  int (*GetInputType)(const CustomOp*, size_t);
  size_t (*GetInputTypeCount)(const CustomOp*);
  int (*GetOutputType)(const CustomOp*, size_t);
  size_t (*GetOutputTypeCount)(const CustomOp*);
  void (*KernelCompute)(void*, OrtKernelContext*);
  void (*KernelDestroy)(void*);
  int (*GetInputCharacteristic)(const CustomOp*, size_t);
  int (*GetOutputCharacteristic)(const CustomOp*, size_t);
  int (*GetInputMemoryType)(const CustomOp*, size_t);
  int (*GetVariadicInputMinArity)(const CustomOp*);
  int (*GetVariadicInputHomogeneity)(const CustomOp*);
  int (*GetVariadicOutputMinArity)(const CustomOp*);
  int (*GetVariadicOutputHomogeneity)(const CustomOp*);
  OrtStatus* (*CreateKernelV2)(const CustomOp*, const OrtApi*, const OrtKernelInfo*, void**);
  OrtStatus* (*KernelComputeV2)(void*, OrtKernelContext*);
  void* InferOutputShapeFn;  // unused (null)
  int (*GetStartVersion)(const CustomOp*);
  int (*GetEndVersion)(const CustomOp*);
  size_t (*GetMayInplace)(int**, int**);
  void (*ReleaseMayInplace)(int*, int*);
  size_t (*GetAliasMap)(int**, int**);
  void (*ReleaseAliasMap)(int*, int*);
};
constexpr uint32_t kCustomOpVersion = 18;

template <typename F>
F slot(const OrtApi* api, Slot index) {
  return reinterpret_cast<F const*>(api)[index];
}

#define ORT_CALL(api, name, type, ...)                            \
  do {                                                             \
    if (OrtStatus* status_ = slot<type>(api, name)(__VA_ARGS__)) { \
      return status_;                                              \
    }                                                              \
  } while (0)

using StatusFn = OrtStatus* (*)(int, const char*);
using CountFn = OrtStatus* (*)(const OrtKernelContext*, size_t*);
using InputFn = OrtStatus* (*)(const OrtKernelContext*, size_t, const OrtValue**);
using OutputFn = OrtStatus* (*)(OrtKernelContext*, size_t, const int64_t*, size_t, OrtValue**);
using DataFn = OrtStatus* (*)(OrtValue*, void**);
using TypeShapeFn = OrtStatus* (*)(const OrtValue*, OrtTypeShape**);
using DimCountFn = OrtStatus* (*)(const OrtTypeShape*, size_t*);
using DimsFn = OrtStatus* (*)(const OrtTypeShape*, int64_t*, size_t);
using ElementsFn = OrtStatus* (*)(const OrtTypeShape*, size_t*);
using ReleaseFn = void (*)(OrtTypeShape*);
using ParallelForFn = OrtStatus* (*)(const OrtKernelContext*, void (*)(void*, size_t), size_t,
                                     size_t, void*);
using CreateDomainFn = OrtStatus* (*)(const char*, OrtCustomOpDomain**);
using DomainAddFn = OrtStatus* (*)(OrtCustomOpDomain*, const CustomOp*);
using AddDomainFn = OrtStatus* (*)(OrtSessionOptions*, OrtCustomOpDomain*);

OrtStatus* error(const OrtApi* api, const std::string& message) {
  return slot<StatusFn>(api, kCreateStatus)(kErrorInvalidArgument, message.c_str());
}

// A tensor: its data (float; SparseOutliers reads its int64 indices through it), shape and
// element count.
struct Tensor {
  float* data = nullptr;
  std::vector<int64_t> shape;
  size_t size = 0;
  int64_t last() const { return shape.empty() ? 1 : shape.back(); }
};

OrtStatus* read_tensor(const OrtApi* api, const OrtValue* value, Tensor* out) {
  OrtTypeShape* info = nullptr;
  ORT_CALL(api, kGetTensorTypeAndShape, TypeShapeFn, value, &info);
  size_t rank = 0;
  OrtStatus* status = slot<DimCountFn>(api, kGetDimensionsCount)(info, &rank);
  if (!status) {
    out->shape.resize(rank);
    status = slot<DimsFn>(api, kGetDimensions)(info, out->shape.data(), rank);
  }
  if (!status) status = slot<ElementsFn>(api, kGetTensorShapeElementCount)(info, &out->size);
  slot<ReleaseFn>(api, kReleaseTensorTypeAndShapeInfo)(info);
  if (status) return status;
  void* data = nullptr;
  ORT_CALL(api, kGetTensorMutableData, DataFn, const_cast<OrtValue*>(value), &data);
  out->data = static_cast<float*>(data);
  return nullptr;
}

OrtStatus* input(const OrtApi* api, OrtKernelContext* context, size_t index, Tensor* out) {
  const OrtValue* value = nullptr;
  ORT_CALL(api, kKernelContextGetInput, InputFn, context, index, &value);
  return read_tensor(api, value, out);
}

// Input `index` where the node has it (an optional input); else `out` stays empty.
OrtStatus* optional_input(const OrtApi* api, OrtKernelContext* context, size_t index,
                          Tensor* out) {
  size_t count = 0;
  ORT_CALL(api, kKernelContextGetInputCount, CountFn, context, &count);
  if (count <= index) return nullptr;
  const OrtValue* value = nullptr;
  ORT_CALL(api, kKernelContextGetInput, InputFn, context, index, &value);
  return value ? read_tensor(api, value, out) : nullptr;
}

OrtStatus* output(const OrtApi* api, OrtKernelContext* context, size_t index,
                  const std::vector<int64_t>& shape, float** data) {
  OrtValue* value = nullptr;
  ORT_CALL(api, kKernelContextGetOutput, OutputFn, context, index, shape.data(), shape.size(),
           &value);
  void* raw = nullptr;
  ORT_CALL(api, kGetTensorMutableData, DataFn, value, &raw);
  *data = static_cast<float*>(raw);
  return nullptr;
}

// Runs body(task) for task in [0, tasks) on onnxruntime's intra-op threads.
template <typename Body>
OrtStatus* parallel_for(const OrtApi* api, OrtKernelContext* context, size_t tasks,
                        Body& body) {
  if (tasks <= 1) {
    if (tasks == 1) body(0);
    return nullptr;
  }
  auto trampoline = [](void* data, size_t task) { (*static_cast<Body*>(data))(task); };
  return slot<ParallelForFn>(api, kKernelContextParallelFor)(context, trampoline, tasks, 0,
                                                             &body);
}

// Elements per parallel task: waking onnxruntime's workers costs tens of microseconds
// (more without spin-waiting), so the cheap passes split only large tensors, and the
// noise (about 1 ns per value) splits sooner.
constexpr size_t kChunk = 1 << 17;
constexpr size_t kNoiseChunk = 1 << 14;

size_t tasks_for(size_t rows, size_t row_size, size_t chunk, size_t* rows_per_task) {
  *rows_per_task = std::max<size_t>(1, chunk / std::max<size_t>(1, row_size));
  return (rows + *rows_per_task - 1) / *rows_per_task;
}

// ---------------------------------------------------------------- random normals

uint64_t splitmix64(uint64_t* state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

inline float bits_to_float(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

inline uint32_t float_to_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

// ln(u) for u in (0, 1] given as float bits: u = 2^e m with m in [sqrt(1/2), sqrt(2)),
// ln m = 2 atanh(t), t = (m - 1) / (m + 1), |t| < 0.172, by its series to t^9
// (relative error < 1e-9). Integer operations only on the bits, so that it vectorises.
inline float log_unit(uint32_t bits) {
  uint32_t high = ((bits & 0x007FFFFFu) | 0x3F800000u) > 0x3FB504F3u ? 1u : 0u;  // m > sqrt 2
  int32_t exponent = static_cast<int32_t>(bits >> 23) - 127 + static_cast<int32_t>(high);
  float m = bits_to_float(((bits & 0x007FFFFFu) | 0x3F800000u) - (high << 23));
  float t = (m - 1.0f) / (m + 1.0f);
  float t2 = t * t;
  float series = 1.0f + t2 * (1.0f / 3 + t2 * (1.0f / 5 + t2 * (1.0f / 7 + t2 * (1.0f / 9))));
  return static_cast<float>(exponent) * 0.69314718f + 2.0f * t * series;
}

// Standard normals from 8 xoshiro128++ streams at once, by Box-Muller: two 32-bit
// draws give u in (0, 1] (31 bits of one) for the radius sqrt(-2 ln u), and an angle
// uniform on the circle as a quadrant (2 bits of the other) and an angle in
// [-pi/4, pi/4) (24 bits), whose sine and cosine are Taylor polynomials to degree 11
// and 10 (error < 3e-8).
class Normal {
 public:
  static constexpr int kLanes = 8;
  static constexpr size_t kDraws = 64;          // pairs per step
  static constexpr size_t kBlock = 2 * kDraws;  // normals per step

  explicit Normal(uint64_t key) {
    for (int lane = 0; lane < kLanes; ++lane) {
      uint64_t a = splitmix64(&key), b = splitmix64(&key);
      s0_[lane] = static_cast<uint32_t>(a);
      s1_[lane] = static_cast<uint32_t>(a >> 32);
      s2_[lane] = static_cast<uint32_t>(b);
      s3_[lane] = static_cast<uint32_t>(b >> 32) | 1u;  // never an all-zero state
    }
  }

  // Fills out[0, count) with N(0, 1) draws; count a multiple of kBlock.
  void fill(float* out, size_t count) {
    uint32_t words[2 * kDraws];
    const uint32_t* high = words;
    const uint32_t* low = words + kDraws;
    for (size_t start = 0; start < count; start += kBlock) {
      for (size_t step = 0; step < 2 * kDraws; step += kLanes) {
#pragma omp simd
        for (int lane = 0; lane < kLanes; ++lane) {
          uint32_t sum = s0_[lane] + s3_[lane];
          words[step + lane] = ((sum << 7) | (sum >> 25)) + s0_[lane];
          uint32_t t = s1_[lane] << 9;
          s2_[lane] ^= s0_[lane];
          s3_[lane] ^= s1_[lane];
          s1_[lane] ^= s2_[lane];
          s0_[lane] ^= s3_[lane];
          s2_[lane] ^= t;
          s3_[lane] = (s3_[lane] << 11) | (s3_[lane] >> 21);
        }
      }
      float* first = out + start;
      float* second = out + start + kDraws;
      for (size_t i = 0; i < kDraws; ++i) {
        float u = (static_cast<float>(static_cast<int32_t>(high[i] >> 1)) + 0.5f) * 0x1p-31f;
        float radius = std::sqrt(-2.0f * log_unit(float_to_bits(u)));
        float phi = (static_cast<float>(static_cast<int32_t>(low[i] >> 8)) * 0x1p-24f - 0.5f) *
                    1.57079633f;
        float p2 = phi * phi;
        float sine = phi * (1.0f + p2 * (-1.0f / 6 + p2 * (1.0f / 120 + p2 * (
            -1.0f / 5040 + p2 * (1.0f / 362880 + p2 * (-1.0f / 39916800))))));
        float cosine = 1.0f + p2 * (-0.5f + p2 * (1.0f / 24 + p2 * (-1.0f / 720 + p2 * (
            1.0f / 40320 + p2 * (-1.0f / 3628800)))));
        // Rotate (cos, sin) by quadrant q * pi/2: swap for odd q, then flip signs.
        uint32_t q = low[i] & 3u;
        uint32_t swap = 0u - (q & 1u);
        uint32_t c_bits = (float_to_bits(cosine) & ~swap) | (float_to_bits(sine) & swap);
        uint32_t s_bits = (float_to_bits(sine) & ~swap) | (float_to_bits(cosine) & swap);
        c_bits ^= ((q ^ (q >> 1)) & 1u) << 31;  // q = 1, 2: -
        s_bits ^= (q >> 1) << 31;               // q = 2, 3: -
        first[i] = radius * bits_to_float(c_bits);
        second[i] = radius * bits_to_float(s_bits);
      }
    }
  }

 private:
  uint32_t s0_[kLanes], s1_[kLanes], s2_[kLanes], s3_[kLanes];
};

// ---------------------------------------------------------------- kernels

// min(max(v, low), high), as onnxruntime's Clip.
inline float clip(float v, float low, float high) {
  v = v < low ? low : v;
  return v > high ? high : v;
}

enum class Kind { kDac, kAdc, kNoisyAdc, kSparse };

struct Kernel {
  const OrtApi* api;
  Kind kind;
  uint64_t seed;
  std::atomic<uint64_t> runs{0};
};

OrtStatus* compute_dac(Kernel* kernel, OrtKernelContext* context) {
  const OrtApi* api = kernel->api;
  Tensor x, scale, h_in;
  OrtStatus* status = input(api, context, 0, &x);
  if (!status) status = input(api, context, 1, &scale);
  if (!status) status = input(api, context, 2, &h_in);
  if (status) return status;
  Tensor pre;
  if ((status = optional_input(api, context, 3, &pre))) return status;
  size_t slices = 0;
  ORT_CALL(api, kKernelContextGetOutputCount, CountFn, context, &slices);
  const size_t width = static_cast<size_t>(x.last());
  if (slices == 0 || x.shape.empty() || width % slices != 0 || h_in.size != 1 ||
      (scale.size != 1 && scale.size != width) || (pre.data && pre.size != width)) {
    return error(api, "AnalogDAC: X's last axis must split into the outputs, in_scale_cols "
                      "must have 1 or K values, pre_scale K and h_in one");
  }
  const size_t slice = width / slices;
  std::vector<int64_t> shape = x.shape;
  shape.back() = static_cast<int64_t>(slice);
  std::vector<float*> outs(slices);
  for (size_t s = 0; s < slices; ++s) {
    if ((status = output(api, context, s, shape, &outs[s]))) return status;
  }
  const size_t rows = width ? x.size / width : 0;
  const float high = h_in.data[0], low = -high;
  const float* in = x.data;
  const float* scales = scale.data;
  const bool per_column = scale.size != 1;
  size_t rows_per_task = 1;
  const size_t tasks = tasks_for(rows, width, kChunk, &rows_per_task);
  auto body = [&](size_t task) {
    const size_t end = std::min(rows, (task + 1) * rows_per_task);
    for (size_t row = task * rows_per_task; row < end; ++row) {
      for (size_t s = 0; s < slices; ++s) {
        const float* source = in + row * width + s * slice;
        const float* factor = per_column ? scales + s * slice : scales;
        float* target = outs[s] + row * slice;
        if (pre.data) {  // (x * pre) * s: the Mul this input replaces, then the DAC's
          const float* before = pre.data + s * slice;
          const float f = factor[0];
          for (size_t c = 0; c < slice; ++c) {
            const float x = source[c] * before[c];
            target[c] = std::nearbyint(clip(x * (per_column ? factor[c] : f), low, high));
          }
        } else if (per_column) {
          for (size_t c = 0; c < slice; ++c) {
            target[c] = std::nearbyint(clip(source[c] * factor[c], low, high));
          }
        } else {
          const float f = factor[0];
          for (size_t c = 0; c < slice; ++c) {
            target[c] = std::nearbyint(clip(source[c] * f, low, high));
          }
        }
      }
    }
  };
  return parallel_for(api, context, tasks, body);
}

OrtStatus* compute_adc(Kernel* kernel, OrtKernelContext* context) {
  const OrtApi* api = kernel->api;
  const bool noisy = kernel->kind == Kind::kNoisyAdc;
  const size_t fixed = noisy ? 2 : 1;
  size_t count = 0;
  ORT_CALL(api, kKernelContextGetInputCount, CountFn, context, &count);
  if (count < fixed + 2 || (count - fixed) % 2 != 0) {
    return error(api, "AnalogADC: expects as many out_step inputs as Z inputs");
  }
  const size_t slices = (count - fixed) / 2;
  Tensor h_out, noise_std;
  OrtStatus* status = input(api, context, 0, &h_out);
  if (!status && noisy) status = input(api, context, 1, &noise_std);
  if (status) return status;
  std::vector<Tensor> z(slices), step(slices);
  for (size_t s = 0; s < slices && !status; ++s) {
    status = input(api, context, fixed + s, &z[s]);
    if (!status) status = input(api, context, fixed + slices + s, &step[s]);
  }
  if (status) return status;
  const size_t width = static_cast<size_t>(z[0].last());
  bool valid = h_out.size == 1 && (!noisy || noise_std.size == 1) && !z[0].shape.empty();
  for (size_t s = 0; s < slices; ++s) {
    valid = valid && z[s].shape == z[0].shape && (step[s].size == 1 || step[s].size == width);
  }
  if (!valid) {
    return error(api, "AnalogADC: the Z inputs must share one shape, each out_step must have "
                      "1 or N values, h_out and noise_std one");
  }
  float* y = nullptr;
  if ((status = output(api, context, 0, z[0].shape, &y))) return status;
  const size_t rows = width ? z[0].size / width : 0;
  const float high = h_out.data[0], low = -high;
  const float sigma = noisy ? noise_std.data[0] : 0.0f;
  const uint64_t run = kernel->runs.fetch_add(1, std::memory_order_relaxed);
  const uint64_t seed = kernel->seed;
  size_t rows_per_task = 1;
  const size_t tasks = tasks_for(rows, width * slices, noisy ? kNoiseChunk : kChunk,
                                 &rows_per_task);
  const size_t padded = (width + Normal::kBlock - 1) / Normal::kBlock * Normal::kBlock;
  auto body = [&](size_t task) {
    uint64_t key = seed ^ (run * 0xD1B54A32D192ED03ull);
    key = splitmix64(&key) ^ task;
    Normal normal(splitmix64(&key));
    std::vector<float> noise(noisy ? padded : 0);
    const size_t end = std::min(rows, (task + 1) * rows_per_task);
    for (size_t row = task * rows_per_task; row < end; ++row) {
      float* target = y + row * width;
      for (size_t s = 0; s < slices; ++s) {
        const float* level = z[s].data + row * width;
        const float* factor = step[s].data;
        const size_t stride = step[s].size == 1 ? 0 : 1;
        if (noisy) normal.fill(noise.data(), padded);
        for (size_t c = 0; c < width; ++c) {
          float v = noisy ? level[c] + noise[c] * sigma : level[c];
          float out = clip(std::nearbyint(v), low, high) * factor[c * stride];
          target[c] = s == 0 ? out : target[c] + out;
        }
      }
    }
  };
  return parallel_for(api, context, tasks, body);
}

// SparseOutliers (afmc.ops.sparse_outliers_onnx): Y[r, j] = sum_t X[r, indices[j, t]] *
// values[j, t], the slots added in order t = 0 .. M-1 from 0 as the stock body adds them
// (float32, no fused multiply-add: bit for bit its output). Rows of X go in blocks of
// kSparseRows, transposed to [K, kSparseRows], so each weight row's indices and values
// are read once per block and every slot is one vector multiply-add over the block; the
// sums of kSparseOuts outputs gather in a tile written back row by row (contiguous
// stores). Optional inputs: pre_scale [K], so X * pre_scale is read (the Mul it
// replaces), and addend, Y's shape, so addend + Y is written (the Add joining the
// analog output it replaces: the same float32 sum).
constexpr size_t kSparseRows = 32;
constexpr size_t kSparseOuts = 16;
constexpr size_t kSparseLanes = 4;  // outputs summed at once (independent add chains)

// The sums of outputs first .. first + Lanes - 1 over X's block `columns` ([K,
// kSparseRows]) into tile rows 0 .. Lanes - 1: each from 0, slot after slot; the Lanes
// sums are independent add chains, interleaved so they overlap.
template <size_t Lanes>
void sparse_sums(const float* columns, const int64_t* index, const float* weight,
                 size_t slots, size_t first, float (*tile)[kSparseRows]) {
  float acc[Lanes][kSparseRows] = {};
  for (size_t t = 0; t < slots; ++t) {
    for (size_t q = 0; q < Lanes; ++q) {
      const size_t j = first + q;
      const float* column = columns + index[j * slots + t] * kSparseRows;
      const float v = weight[j * slots + t];
      for (size_t r = 0; r < kSparseRows; ++r) acc[q][r] += column[r] * v;
    }
  }
  for (size_t q = 0; q < Lanes; ++q) {
    for (size_t r = 0; r < kSparseRows; ++r) tile[q][r] = acc[q][r];
  }
}

OrtStatus* compute_sparse(Kernel* kernel, OrtKernelContext* context) {
  const OrtApi* api = kernel->api;
  Tensor x, indices, values;
  OrtStatus* status = input(api, context, 0, &x);
  if (!status) status = input(api, context, 1, &indices);
  if (!status) status = input(api, context, 2, &values);
  if (status) return status;
  Tensor pre, addend;
  if ((status = optional_input(api, context, 3, &pre))) return status;
  if ((status = optional_input(api, context, 4, &addend))) return status;
  const size_t width = static_cast<size_t>(x.last());
  if (x.shape.empty() || indices.shape.size() != 2 || values.shape != indices.shape ||
      (pre.data && pre.size != width)) {
    return error(api, "SparseOutliers: indices and values must be [N, M] alike, X [..., K], "
                      "pre_scale K");
  }
  const size_t outs = static_cast<size_t>(indices.shape[0]);
  const size_t slots = static_cast<size_t>(indices.shape[1]);
  const int64_t* index = reinterpret_cast<const int64_t*>(indices.data);
  for (size_t i = 0; i < indices.size; ++i) {
    if (index[i] < 0 || static_cast<size_t>(index[i]) >= width) {
      return error(api, "SparseOutliers: an index is outside X's last axis");
    }
  }
  std::vector<int64_t> shape = x.shape;
  shape.back() = static_cast<int64_t>(outs);
  if (addend.data && addend.shape != shape) {
    return error(api, "SparseOutliers: addend must have the output's shape [..., N]");
  }
  float* y = nullptr;
  if ((status = output(api, context, 0, shape, &y))) return status;
  const size_t rows = width ? x.size / width : 0;
  const size_t tasks = (rows + kSparseRows - 1) / kSparseRows;
  const float* in = x.data;
  const float* weight = values.data;
  const float* scale = pre.data;
  const float* add = addend.data;
  auto body = [&](size_t task) {
    const size_t first = task * kSparseRows;
    const size_t block = std::min(rows, first + kSparseRows) - first;
    thread_local std::vector<float> columns;  // X's block, [K, kSparseRows]
    columns.resize(width * kSparseRows);
    const float* source = in + first * width;
    for (size_t k = 0; k < width; ++k) {  // writes run along the block (contiguous)
      float* column = columns.data() + k * kSparseRows;
      if (scale) {
        const float s = scale[k];
        for (size_t r = 0; r < block; ++r) column[r] = source[r * width + k] * s;
      } else {
        for (size_t r = 0; r < block; ++r) column[r] = source[r * width + k];
      }
      for (size_t r = block; r < kSparseRows; ++r) column[r] = 0.0f;  // a last, short block
    }
    float tile[kSparseOuts][kSparseRows];
    for (size_t j0 = 0; j0 < outs; j0 += kSparseOuts) {
      const size_t count = std::min(outs, j0 + kSparseOuts) - j0;
      size_t o = 0;
      for (; o + kSparseLanes <= count; o += kSparseLanes) {
        sparse_sums<kSparseLanes>(columns.data(), index, weight, slots, j0 + o, tile + o);
      }
      for (; o < count; ++o) sparse_sums<1>(columns.data(), index, weight, slots, j0 + o, tile + o);
      for (size_t r = 0; r < block; ++r) {
        float* target = y + (first + r) * outs + j0;
        if (add) {
          const float* base = add + (first + r) * outs + j0;
          for (size_t o = 0; o < count; ++o) target[o] = base[o] + tile[o][r];
        } else {
          for (size_t o = 0; o < count; ++o) target[o] = tile[o][r];
        }
      }
    }
  };
  return parallel_for(api, context, tasks, body);
}

// ---------------------------------------------------------------- op descriptors

struct OpDef {
  CustomOp op;  // first member: onnxruntime's pointer to op is a pointer to its OpDef
  const char* name;
  Kind kind;
  size_t inputs;   // fixed inputs, plus one variadic for the ADCs
  size_t outputs;  // 1 (variadic for the DAC)
};

const OpDef& def(const CustomOp* op) { return *reinterpret_cast<const OpDef*>(op); }

OrtStatus* create_kernel(const CustomOp* op, const OrtApi* api, const OrtKernelInfo*,
                         void** out) {
  std::random_device device;
  uint64_t seed = (static_cast<uint64_t>(device()) << 32) ^ device();
  *out = new Kernel{api, def(op).kind, seed};
  return nullptr;
}

OrtStatus* compute(void* state, OrtKernelContext* context) {
  Kernel* kernel = static_cast<Kernel*>(state);
  switch (kernel->kind) {
    case Kind::kDac: return compute_dac(kernel, context);
    case Kind::kSparse: return compute_sparse(kernel, context);
    default: return compute_adc(kernel, context);
  }
}

size_t no_pairs(int** inputs, int** outputs) {
  *inputs = *outputs = nullptr;
  return 0;
}

size_t may_write_over_addend(int** inputs, int** outputs) {
  *inputs = new int[1]{4};
  *outputs = new int[1]{0};
  return 1;
}

void release_pairs(int* inputs, int* outputs) {
  delete[] inputs;
  delete[] outputs;
}

OpDef make_op(const char* name, Kind kind) {
  OpDef d{};
  d.name = name;
  d.kind = kind;
  d.inputs = kind == Kind::kSparse ? 5 : kind == Kind::kDac ? 4 : kind == Kind::kAdc ? 2 : 3;
  d.outputs = 1;
  CustomOp& op = d.op;
  op.version = kCustomOpVersion;
  op.GetName = [](const CustomOp* o) { return def(o).name; };
  op.GetExecutionProviderType = [](const CustomOp*) -> const char* { return nullptr; };
  op.GetInputType = [](const CustomOp* o, size_t index) {
    return def(o).kind == Kind::kSparse && index == 1 ? kInt64 : kFloat;
  };
  op.GetInputTypeCount = [](const CustomOp* o) { return def(o).inputs; };
  op.GetOutputType = [](const CustomOp*, size_t) { return kFloat; };
  op.GetOutputTypeCount = [](const CustomOp* o) { return def(o).outputs; };
  op.KernelDestroy = [](void* kernel) { delete static_cast<Kernel*>(kernel); };
  op.GetInputCharacteristic = [](const CustomOp* o, size_t index) {
    if (def(o).kind == Kind::kSparse) return index < 3 ? kRequired : kOptional;
    if (index + 1 < def(o).inputs) return kRequired;
    return def(o).kind == Kind::kDac ? kOptional : kVariadic;
  };
  op.GetOutputCharacteristic = [](const CustomOp* o, size_t) {
    return def(o).kind == Kind::kDac ? kVariadic : kRequired;
  };
  op.GetInputMemoryType = [](const CustomOp*, size_t) { return kMemDefault; };
  op.GetVariadicInputMinArity = [](const CustomOp*) { return 2; };
  op.GetVariadicInputHomogeneity = [](const CustomOp*) { return 1; };
  op.GetVariadicOutputMinArity = [](const CustomOp*) { return 1; };
  op.GetVariadicOutputHomogeneity = [](const CustomOp*) { return 1; };
  op.CreateKernelV2 = create_kernel;
  op.KernelComputeV2 = compute;
  op.GetStartVersion = [](const CustomOp*) { return 1; };
  op.GetEndVersion = [](const CustomOp*) { return std::numeric_limits<int>::max(); };
  // SparseOutliers may write its output over its addend (input 4), which it reads
  // element by element before writing the same element.
  op.GetMayInplace = kind == Kind::kSparse ? may_write_over_addend : no_pairs;
  op.ReleaseMayInplace = release_pairs;
  op.GetAliasMap = no_pairs;
  op.ReleaseAliasMap = release_pairs;
  return d;
}

const OpDef kDac = make_op("AnalogDAC", Kind::kDac);
const OpDef kAdc = make_op("AnalogADC", Kind::kAdc);
const OpDef kNoisyAdc = make_op("NoisyAnalogADC", Kind::kNoisyAdc);
const OpDef kSparse = make_op("SparseOutliers", Kind::kSparse);

}  // namespace

// Entry point of SessionOptions.register_custom_ops_library: adds the domain
// "afmc.kernels" with AnalogDAC, AnalogADC, NoisyAnalogADC and SparseOutliers to
// `options`.
extern "C" __attribute__((visibility("default"))) OrtStatus* RegisterCustomOps(
    OrtSessionOptions* options, const ApiBase* base) {
  const OrtApi* api = base->GetApi(kApiVersion);
  if (!api) {
    const OrtApi* oldest = base->GetApi(1);
    return slot<StatusFn>(oldest, kCreateStatus)(
        kErrorInvalidArgument, "afmc.kernels needs onnxruntime C API version 17 (1.17) or newer");
  }
  OrtCustomOpDomain* domain = nullptr;
  ORT_CALL(api, kCreateCustomOpDomain, CreateDomainFn, "afmc.kernels", &domain);
  for (const OpDef* op : {&kDac, &kAdc, &kNoisyAdc, &kSparse}) {
    ORT_CALL(api, kCustomOpDomainAdd, DomainAddFn, domain, &op->op);
  }
  ORT_CALL(api, kAddCustomOpDomain, AddDomainFn, options, domain);
  return nullptr;
}
