// CUDA's execution model on the host, for running kernels/*.cu without a GPU (tests only).
//
// A launch runs the grid's blocks one after another. Without __syncthreads the threads of a
// block run one after another too; kernels that call __syncthreads run each thread as a fiber
// (its own stack), and __syncthreads switches to the next fiber, so a block's threads advance
// from barrier to barrier together, as on the device. On x86-64 a switch is a few instructions
// (emu_switch below); elsewhere, or built with -DEMU_UCONTEXT, it is ucontext's swapcontext,
// which also makes a system call for the signal mask on every switch (LeNet's bias-gradient
// sums, 512 blocks of 256 threads: 0.74 s a launch against 0.07). __shared__ variables are
// function statics: one copy that the threads of the running block share. atomicAdd is a
// plain add (one OS thread).
// A divergent barrier (some threads finished while others wait) is reported as an error.
//
// Order: the GPU runs a grid's blocks, and a block's threads between two barriers, in no order
// it promises. The emulator takes them in a fixed shuffled order (emu::shuffle), not by index:
// in index order a kernel that reads what a lower thread (or block) wrote, without a barrier
// between, would pass here and race on the device.
#pragma once
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>
#if !defined(__x86_64__) || defined(EMU_UCONTEXT)
#include <ucontext.h>
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static

struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

static uint3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;

namespace emu {

#if defined(__x86_64__) && !defined(EMU_UCONTEXT)
// emu_switch(&from, to): push the callee-saved registers (and the SSE and x87 control words)
// on this stack, store its stack pointer in from, load to, pop the other fiber's and return
// into it. A new fiber's stack is laid out as if it had called emu_switch from fiber_start.
extern "C" void emu_switch(void** from, void* to);
asm(R"(
  .text
  .globl emu_switch
  .hidden emu_switch
  .type emu_switch, @function
emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size emu_switch, .-emu_switch
)");

struct Context {
  void* sp = nullptr;
};

inline void switch_to(Context& from, Context& to) { emu_switch(&from.sp, to.sp); }

// a context that starts entry() on stack [base, base + size); entry must never return
inline void make_context(Context& ctx, char* base, size_t size, void (*entry)()) {
  uintptr_t top = (reinterpret_cast<uintptr_t>(base) + size) & ~uintptr_t(15);
  void** sp = reinterpret_cast<void**>(top) - 2;    // entry's own return address: 0
  sp[0] = reinterpret_cast<void*>(entry);           // where emu_switch returns to
  sp[1] = nullptr;
  sp -= 6;                                          // rbp rbx r12 r13 r14 r15: zero
  for (int i = 0; i < 6; ++i) sp[i] = nullptr;
  sp -= 1;                                          // the control words of this thread
  unsigned mxcsr;
  unsigned short fpcw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpcw));
  std::memcpy(sp, &mxcsr, 4);
  std::memcpy(reinterpret_cast<char*>(sp) + 4, &fpcw, 2);
  ctx.sp = sp;                    // entry starts with rsp = top - 8, as after a call
}
#else
struct Context {
  ucontext_t uc;
};

inline void switch_to(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }

inline void make_context(Context& ctx, char* base, size_t size, void (*entry)()) {
  getcontext(&ctx.uc);
  ctx.uc.uc_stack.ss_sp = base;
  ctx.uc.uc_stack.ss_size = size;
  ctx.uc.uc_link = nullptr;
  makecontext(&ctx.uc, entry, 0);
}
#endif

struct Fiber {
  Context ctx;
  std::vector<char> stack;
  uint3 tid;
  bool done;
};

static Context scheduler;
static Fiber* current = nullptr;
static std::vector<Fiber> fibers;
static void (*body)(void*) = nullptr;
static void* body_arg = nullptr;
static std::string error;

// perm <- a permutation of 0 .. n-1 drawn from seed (Fisher-Yates on a 64-bit LCG): the same
// launch runs in the same order every time, so a failure reproduces
inline void shuffle(std::vector<unsigned>& perm, unsigned long long n, unsigned long long seed) {
  perm.resize(n);
  for (unsigned long long i = 0; i < n; ++i) perm[i] = (unsigned)i;
  unsigned long long s = (seed + 1) * 0x9E3779B97F4A7C15ULL;
  for (unsigned long long i = n; i > 1; --i) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    std::swap(perm[i - 1], perm[(s >> 33) % i]);
  }
}

inline void fiber_main() {
  body(body_arg);
  current->done = true;
  switch_to(current->ctx, scheduler);   // never resumed
}

inline void syncthreads() {
  if (current == nullptr) {
    error = "__syncthreads outside a fiber launch (the emulator ran this kernel without fibers)";
    return;
  }
  switch_to(current->ctx, scheduler);
}

template <typename F>
void run_block_fibers(const F& f, unsigned long long block) {
  unsigned n = blockDim.x * blockDim.y * blockDim.z;
  if (fibers.size() < n) fibers.resize(n);
  body = [](void* p) { (*static_cast<const F*>(p))(); };
  body_arg = const_cast<F*>(&f);
  for (unsigned t = 0; t < n; ++t) {
    Fiber& fb = fibers[t];
    fb.stack.resize(128 * 1024);
    fb.tid = {t % blockDim.x, (t / blockDim.x) % blockDim.y, t / (blockDim.x * blockDim.y)};
    fb.done = false;
    make_context(fb.ctx, fb.stack.data(), fb.stack.size(), fiber_main);
  }
  std::vector<unsigned> order;
  for (unsigned long long round = 0;; ++round) {   // every thread to its next barrier
    unsigned finished = 0, waiting = 0;
    shuffle(order, n, block * 1000003ULL + round);
    for (unsigned t : order) {
      Fiber& fb = fibers[t];
      if (fb.done) continue;
      current = &fb;
      threadIdx = fb.tid;
      switch_to(scheduler, fb.ctx);
      if (fb.done) ++finished; else ++waiting;
    }
    current = nullptr;
    if (waiting == 0) break;
    if (finished > 0) {
      error = "divergent __syncthreads: some threads of a block ended while others waited";
      break;
    }
  }
}

template <typename F>
void run_grid(dim3 grid, dim3 block, bool fibered, const F& f) {
  gridDim = grid;
  blockDim = block;
  unsigned long long blocks = (unsigned long long)grid.x * grid.y * grid.z;
  unsigned threads = block.x * block.y * block.z;
  if (blocks > 0xFFFFFFFFULL) {
    error = "the emulator runs grids of fewer than 2^32 blocks";
    return;
  }
  std::vector<unsigned> block_order, thread_order;
  shuffle(block_order, blocks, blocks);
  for (unsigned b : block_order) {
    blockIdx = {b % grid.x, (b / grid.x) % grid.y, b / (grid.x * grid.y)};
    if (fibered) {
      run_block_fibers(f, b);
      if (!error.empty()) return;
      continue;
    }
    shuffle(thread_order, threads, b);
    for (unsigned t : thread_order) {
      threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
      f();
    }
  }
}

template <typename... A, size_t... I>
void call_with(void (*f)(A...), void** args, std::index_sequence<I...>) {
  f(*static_cast<typename std::remove_cv<A>::type*>(args[I])...);
}

// one letter per parameter, NumPy's type characters; '*' marks a pointer
template <typename T> struct code { static constexpr const char* c = "?unknown"; };
template <> struct code<float> { static constexpr const char* c = "f"; };
template <> struct code<double> { static constexpr const char* c = "d"; };
template <> struct code<int> { static constexpr const char* c = "i"; };
template <> struct code<long long> { static constexpr const char* c = "q"; };
template <> struct code<bool> { static constexpr const char* c = "?"; };
template <> struct code<unsigned char> { static constexpr const char* c = "B"; };

template <typename A> std::string param_code() {
  typedef typename std::remove_cv<A>::type P;
  if constexpr (std::is_pointer<P>::value) {
    typedef typename std::remove_cv<typename std::remove_pointer<P>::type>::type E;
    return std::string(code<E>::c) + "*";
  } else {
    return std::string(code<P>::c);
  }
}

template <typename... A> const char* signature(void (*)(A...)) {
  static std::string s;
  s.clear();
  ((s += param_code<A>() + ","), ...);
  return s.c_str();
}

template <typename... A>
const char* launch(void (*f)(A...), unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                   unsigned by, unsigned bz, int fibered, void** args) {
  error.clear();
  auto run = [&]() { call_with(f, args, std::index_sequence_for<A...>{}); };
  run_grid(dim3(gx, gy, gz), dim3(bx, by, bz), fibered != 0, run);
  return error.c_str();
}

}  // namespace emu

inline void __syncthreads() { emu::syncthreads(); }

// CUDA's rounded-operation intrinsics: the host compiler (no -march, so no FMA) rounds each
// operation on its own already
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline double __dsub_rn(double a, double b) { return a - b; }

template <typename T> inline T atomicAdd(T* address, T value) {
  T old = *address;
  *address = old + value;
  return old;
}
