// Threads of the CPU engines (at::parallel_for, i.e. torch's OpenMP pool and
// at::get_num_threads()), shared by every engine:
//
// * with at least as many images as threads, each thread samples its own images (no
//   synchronisation at all);
// * with fewer, a team of threads shares every layer's output channels (panels of 16),
//   with spin barriers between layers. A team whose threads keep arriving late (an
//   oversubscribed machine) gives up at the next pixel and its rank 0 goes on alone.
//
// Results are bitwise the same whatever the split: each output element is accumulated
// in the same order. Also the scratch arena of a team (one zeroed, aligned block).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include <ATen/Parallel.h>

#include "kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define PIXELAUX_PAUSE() _mm_pause()
#else
#define PIXELAUX_PAUSE() ((void)0)
#endif

namespace pixelaux {
namespace cpu {

constexpr int kBarrierSpins = 256;        // pause-spins before a barrier starts timing its wait
constexpr double kBarrierSpinUs = 10.0;   // then spins this long before yielding the CPU
constexpr double kTeamCheckUs = 2000.0;   // rank 0 checks the team's lateness this often
constexpr double kGiveUpFraction = 0.5;   // ... and gives up when it waited more than this
// ... in two checks in a row: one late window is a start-up (a fresh OpenMP pool of the
// worker thread next to another one still spinning) or a blip, not a busy machine
constexpr int kGiveUpStrikes = 2;
constexpr int kStartSpins = 4096;         // spins of a thread waiting for the whole team to start

// A spin barrier for the threads of one team: spins for up to kBarrierSpinUs, then
// yields the CPU while it waits. wait() returns how long it waited in microseconds (0
// for a short wait): long waits mean the other threads were late (uneven work, or
// threads descheduled on an oversubscribed machine).
struct alignas(64) Barrier {
  int size = 1;
  alignas(64) std::atomic<int> count{0};
  alignas(64) std::atomic<int> gen{0};
  alignas(64) std::atomic<int> give_up{0};  // set by rank 0: the team goes on with rank 0 alone
  std::atomic<int> stop{0};                  // set by rank 0: the caller asked to stop

  double wait();
};

// One thread's share of a team's work: output-channel panels of the hidden layers and
// of the head, the images it samples, the positions of the rows it prepares.
struct Share {
  int fp0 = 0, fp1 = 0, c0 = 0, nown = 0;
  int hp0 = 0, hp1 = 0;
  int64_t sb0 = 0, sb1 = 0, m0 = 0, m1 = 0;

  Share() = default;
  Share(int rank, int size, int64_t F, int64_t P, int64_t Bt, int64_t W);
};

// The team side of an engine: its rank, barrier, shares, and the give-up logic.
struct TeamMember {
  Barrier& team;             // the team's barrier
  const int rank;
  int size;
  bool pixel_team;           // pixels split over the team too (else rank 0 alone)
  double waited_us = 0;      // rank 0: time spent waiting for the team since the last check
  int strikes = 0;           // rank 0: checks in a row that found the team late
  std::chrono::steady_clock::time_point since;  // rank 0: the last check
  bool may_give_up = true;   // PIXELAUX_TEAM_GIVE_UP=0: never (for tests and benchmarks)
  bool gave_up = false;      // rank 0: the team gave up, it works alone
  bool quit = false;         // rank > 0: the team gave up, it is done
  Share rs, ps;              // this thread's share of the row starts / of the pixels
  int64_t share_F, share_P, share_Bt, share_W;
  int64_t* progress = nullptr;  // [image-rows done, stop flag] shared with the caller, or null
  bool stopped = false;         // the caller asked to stop: the run ends at a row start

  TeamMember(Barrier& b, int rank_, int size_, bool pixel_team_, int64_t F, int64_t P,
             int64_t Bt, int64_t W);

  // Team barrier of the row starts (and of the pixels when they are split too).
  void sync() {
    if (size <= 1) return;
    const double us = team.wait();
    if (rank == 0) waited_us += us;
  }
  void pixel_sync() {
    if (pixel_team) sync();
  }
  // A synchronisation point of the whole team where it may shrink to rank 0 alone:
  // if rank 0 spent most of the time since the last check (at least kTeamCheckUs ago)
  // waiting for the others (they are not getting a CPU: an oversubscribed machine),
  // the team gives up and rank 0 goes on alone. The buffers are shared; only the split
  // of the work changes.
  void team_point();

  // The start of a row: whether the caller asked to stop (progress[1] != 0), the same
  // answer for every thread of the team (rank 0 reads the flag, the barrier tells the
  // others). Sets stopped (and quit) when so.
  bool stop_point();
  // The end of a row of Bt images (rank 0): progress[0] += Bt.
  void row_done() {
    if (progress && rank == 0) __atomic_fetch_add(&progress[0], share_Bt, __ATOMIC_RELAXED);
  }
};

// Progress and stop of a run, shared with the caller (another thread polls it): a
// tensor of two int64, [rows done summed over the images, stop flag].
inline bool stop_requested(const int64_t* progress) {
  return progress && __atomic_load_n(&progress[1], __ATOMIC_RELAXED) != 0;
}

// PIXELAUX_PROFILE=1: engines print their row / pixel times on stderr.
bool profile_enabled();

// How the images of a batch are split: G teams (groups of images) of S threads each.
struct TeamPlan {
  int G = 1, S = 1;
  bool pixel_team = true;
};

// mode: 0 auto, 1 images over threads, 2 one team over the output channels, 3 the team
// splits the row starts, one thread runs the pixels. hidden: the channels a team shares;
// W: the row width.
TeamPlan plan_teams(int64_t B, int mode, int hidden, int64_t W, int threads);

// Runs run(g, rank, size, pixel_team, barrier) for every thread of every team, teams
// concurrently (or every team alone, one after the other, if fewer threads come).
template <class Run>
void run_teams(const TeamPlan& plan, Run run) {
  const int G = plan.G, S = plan.S;
  std::vector<Barrier> bars(G);
  for (auto& b : bars) b.size = S;
  if (G * S == 1) {
    run(0, 0, 1, true, bars[0]);
    return;
  }
  const int planned = G * S;
  std::atomic<int> tickets{0};
  std::atomic<int64_t> covered{0};
  at::parallel_for(0, planned, 1, [&](int64_t begin, int64_t end) {
    const int ticket = tickets.fetch_add(1);
    covered.fetch_add(end - begin);
    for (int spins = 0; covered.load() < planned; ++spins) {
      if (spins < kStartSpins)
        PIXELAUX_PAUSE();
      else
        std::this_thread::yield();
    }
    const int n = tickets.load();
    if (n == planned) {
      const int g = ticket / S;
      run(g, ticket % S, S, plan.pixel_team, bars[g]);
    } else if (ticket == 0) {
      // Fewer threads than planned (e.g. a nested call): run every team alone.
      for (int g = 0; g < G; ++g) {
        Barrier solo;
        solo.size = 1;
        run(g, 0, 1, true, solo);
      }
    }
  });
}

// Large float blocks (64-byte aligned) from a process-wide pool of freed ones: a block
// freed by one call is handed to the next that asks for about its size, instead of going
// back to the system (whose pages then fault in again: 5-14 us a page in a VM, thousands
// per sampling call). The pool keeps at most kPoolFloats; thread-safe.
constexpr int64_t kPoolFloats = int64_t(1) << 26;  // 256 MiB
// A block of at least n floats (uninitialised); *capacity gets its size.
float* take_block(int64_t n, int64_t* capacity);
// Gives a block from take_block back (to the pool, or to the system when the pool is full).
void give_block(float* p, int64_t capacity);

struct BlockDeleter {
  int64_t capacity = 0;
  void operator()(float* p) const { give_block(p, capacity); }
};

// Scratch buffers of one team: request them with want(), then allocate() gives one
// zero-initialised, 64-byte aligned block and sets every requested pointer.
struct Arena {
  std::vector<std::pair<float**, int64_t>> req;
  std::unique_ptr<float, BlockDeleter> mem;
  void want(float** p, int64_t n) { req.push_back({p, round_up16(std::max<int64_t>(n, 1))}); }
  void allocate();
  // Floats that allocate() would take (what resources.py's memory estimate asks for).
  int64_t requested() const {
    int64_t n = 0;
    for (auto& r : req) n += r.second;
    return n;
  }
  static int64_t round_up16(int64_t n) { return (n + 15) / 16 * 16; }
};

}  // namespace cpu
}  // namespace pixelaux
