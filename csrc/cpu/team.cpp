// Threads of the CPU engines (see team.h).
#include "team.h"

#include <map>
#include <mutex>

#include <cstring>
#include <new>

namespace pixelaux {
namespace cpu {

double Barrier::wait() {
  if (size <= 1) return 0;
  const int g = gen.load(std::memory_order_acquire);
  if (count.fetch_add(1, std::memory_order_acq_rel) == size - 1) {
    count.store(0, std::memory_order_relaxed);
    gen.store(g + 1, std::memory_order_release);
    return 0;
  }
  for (int spins = 0; spins < kBarrierSpins; ++spins) {  // the usual case: a short wait
    if (gen.load(std::memory_order_acquire) != g) return 0;
    PIXELAUX_PAUSE();
  }
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  double us = 0;
  for (int spins = 0; gen.load(std::memory_order_acquire) == g; ++spins) {
    if (us < kBarrierSpinUs) {
      PIXELAUX_PAUSE();
    } else {
      std::this_thread::yield();
    }
    if ((spins & 15) == 0) us = std::chrono::duration<double, std::micro>(clock::now() - t0).count();
  }
  return std::chrono::duration<double, std::micro>(clock::now() - t0).count();
}

Share::Share(int rank, int size, int64_t F, int64_t P, int64_t Bt, int64_t W) {
  const int NPF = (int)((F + kPanel - 1) / kPanel);
  fp0 = NPF * rank / size;
  fp1 = NPF * (rank + 1) / size;
  c0 = fp0 * kPanel;
  nown = (int)std::max<int64_t>(0, std::min<int64_t>(F, (int64_t)fp1 * kPanel) - c0);
  const int NPP = (int)((P + kPanel - 1) / kPanel);
  hp0 = NPP * rank / size;
  hp1 = NPP * (rank + 1) / size;
  sb0 = Bt * rank / size;
  sb1 = Bt * (rank + 1) / size;
  m0 = Bt * W * rank / size;
  m1 = Bt * W * (rank + 1) / size;
}

TeamMember::TeamMember(Barrier& b, int rank_, int size_, bool pixel_team_, int64_t F, int64_t P,
                       int64_t Bt, int64_t W)
    : team(b), rank(rank_), size(size_), pixel_team(pixel_team_ || size_ == 1), share_F(F),
      share_P(P), share_Bt(Bt), share_W(W) {
  const char* env = std::getenv("PIXELAUX_TEAM_GIVE_UP");
  may_give_up = !(env && std::strcmp(env, "0") == 0);
  rs = Share(rank, size, F, P, Bt, W);
  ps = pixel_team ? rs : Share(0, 1, F, P, Bt, W);
  since = std::chrono::steady_clock::now();
}

void TeamMember::team_point() {
  if (size <= 1) return;
  if (rank == 0 && may_give_up) {
    const auto now = std::chrono::steady_clock::now();
    const double us = std::chrono::duration<double, std::micro>(now - since).count();
    if (us >= kTeamCheckUs) {
      strikes = waited_us > kGiveUpFraction * us ? strikes + 1 : 0;
      if (strikes >= kGiveUpStrikes) team.give_up.store(1, std::memory_order_relaxed);
      since = now;
      waited_us = 0;
    }
  }
  sync();
  if (!team.give_up.load(std::memory_order_relaxed)) return;
  if (rank != 0) {
    quit = true;
    return;
  }
  size = 1;
  pixel_team = true;
  rs = ps = Share(0, 1, share_F, share_P, share_Bt, share_W);
  gave_up = true;
}

bool TeamMember::stop_point() {
  if (!progress) return false;
  bool stop;
  if (size <= 1) {
    stop = stop_requested(progress);
  } else {
    // At least one barrier separates rank 0's store for a row from the others' load for
    // the previous one (every row has one), so they always read the current answer.
    if (rank == 0) team.stop.store(stop_requested(progress) ? 1 : 0, std::memory_order_relaxed);
    sync();
    stop = team.stop.load(std::memory_order_relaxed) != 0;
  }
  if (stop) stopped = quit = true;
  return stop;
}

bool profile_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("PIXELAUX_PROFILE");
    return e && std::strcmp(e, "0") != 0;
  }();
  return on;
}

// Auto mode's smallest team work: a team pays a barrier per layer and pixel, and on 2 cores at
// batch 1 it lost to one thread for every hidden-32 stage (1.2-3.0x), for hidden 64 (1.07x,
// bench-32) and for hidden 80 on 8-pixel rows (1.3x), and won only for hidden 80 on 64-pixel
// rows (0.92x; benchmarks/results/cpu_engine.md, "Threads at batch 1").
constexpr int kTeamMinHidden = 80;
constexpr int64_t kTeamMinWidth = 16;

TeamPlan plan_teams(int64_t B, int mode, int hidden, int64_t W, int threads) {
  int T = threads > 0 ? threads : at::get_num_threads();
#if !AT_PARALLEL_OPENMP
  T = 1;  // the team barriers need the chunks of at::parallel_for to run concurrently
#endif
  if (at::in_parallel_region()) T = 1;
  T = std::max(1, T);
  TeamPlan p;
  if (mode == 1) {
    p.G = (int)std::min<int64_t>(T, B);  // images over threads: no synchronisation at all
  } else if (mode == 2 || mode == 3) {
    p.S = T;  // one team over the output channels (of the pixels too in mode 2)
    p.pixel_team = mode == 2;
  } else if (B >= T) {
    p.G = T;
  } else {
    p.G = (int)B;  // teams of T / B threads over the output channels (each team shrinks
    p.S = T / p.G; // to one thread if the machine is too busy for its barriers)
    if (hidden < kTeamMinHidden || W < kTeamMinWidth) p.S = 1;  // too little work per barrier
  }
  // No more threads in a team than it has panels of hidden channels to share.
  p.S = std::max(1, std::min<int>(p.S, (hidden + kPanel - 1) / kPanel));
  return p;
}

namespace {
std::mutex pool_mutex;
std::multimap<int64_t, float*> pool;  // capacity in floats -> block
int64_t pool_floats = 0;
}  // namespace

float* take_block(int64_t n, int64_t* capacity) {
  n = std::max<int64_t>(16, (n + 15) / 16 * 16);
  {
    std::lock_guard<std::mutex> lock(pool_mutex);
    auto it = pool.lower_bound(n);
    if (it != pool.end() && it->first <= 2 * n) {  // about this size: no block twice too big
      float* p = it->second;
      *capacity = it->first;
      pool_floats -= it->first;
      pool.erase(it);
      return p;
    }
  }
  float* p = static_cast<float*>(std::aligned_alloc(64, sizeof(float) * n));
  if (!p) throw std::bad_alloc();
  *capacity = n;
  return p;
}

void give_block(float* p, int64_t capacity) {
  if (!p) return;
  {
    std::lock_guard<std::mutex> lock(pool_mutex);
    if (pool_floats + capacity <= kPoolFloats) {
      pool.emplace(capacity, p);
      pool_floats += capacity;
      return;
    }
  }
  std::free(p);
}

void Arena::allocate() {
  int64_t total = 0;
  for (auto& r : req) total += r.second;
  int64_t capacity = 0;
  float* m = take_block(total, &capacity);
  std::memset(m, 0, sizeof(float) * total);
  mem = std::unique_ptr<float, BlockDeleter>(m, BlockDeleter{capacity});
  int64_t off = 0;
  for (auto& r : req) {
    *r.first = m + off;
    off += r.second;
  }
}

}  // namespace cpu
}  // namespace pixelaux
