// Does the daemon's CUDA work still run inside the sandbox tensorshmd.service
// builds? A GPU-machine check, not part of the build: run_hardening_probe.sh
// compiles it with nvcc and runs it in each mode.
//
// The parent plays a producer: it allocates device memory, fills it, records
// an interprocess event and sends both IPC handles down a pipe. The child plays
// the daemon: before touching CUDA it rebuilds, by hand, what the unit asks
// systemd for, then pins a segment (a sealed memfd, as the daemon's), opens both handles, waits on the
// event and copies the device memory into the pinned segment, and checks the
// bytes. It then reports the device groups and socket families it holds open,
// any writable+executable mappings, and every system call the unit's filter
// would have refused.
//
//   --sandbox      unshare mount+IPC+network namespaces (PrivateMounts,
//                  PrivateIPC, PrivateNetwork), / read-only except /dev, /proc,
//                  /tmp (ProtectSystem=strict, ProtectKernelTunables), uid and
//                  gid 65534 with no capabilities (User=, CapabilityBoundingSet=),
//                  RLIMIT_MEMLOCK infinity (LimitMEMLOCK=), no_new_privs, and a
//                  seccomp filter: native arch only, @system-service minus
//                  @privileged, sockets AF_UNIX only (RestrictAddressFamilies=).
//                  Refused calls are trapped, recorded and fail with EPERM /
//                  EAFNOSUPPORT as under systemd.
//   --mdwe         also refuse W+X mappings the way MemoryDenyWriteExecute= does.
//   --proc-subset  also mount /proc with subset=pid (ProcSubset=pid).
//   --share-event-shm  the producer makes the /dev/shm/cuda.shm.* files behind
//                  its interprocess event readable and writable by others, so
//                  that a daemon running as another user can open the event.
#include <cuda_runtime.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <ucontext.h>
#include <unistd.h>
#include <grp.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>
#include <dirent.h>
#include <fstream>
#include <sstream>

#include "syscall_allowlist.h"

namespace {

constexpr size_t kBytes = 64u << 20;
bool g_share_event_shm = false;
bool g_mdwe = false, g_proc_subset = false, g_sandbox = false;
// --skip=LIST leaves parts of the sandbox out, to find which one breaks something:
// uid, ipc, net, tmp, ro, seccomp.
std::string g_skip;
bool skip(const char* part) { return ("," + g_skip + ",").find("," + std::string(part) + ",") != std::string::npos; }

struct Handles {
  cudaIpcMemHandle_t mem;
  cudaIpcEventHandle_t event;
};

#define CHECK_CUDA(call)                                                                  \
  do {                                                                                    \
    cudaError_t e_ = (call);                                                              \
    if (e_ != cudaSuccess) {                                                              \
      std::fprintf(stderr, "FAIL %s: %s (%s)\n", #call, cudaGetErrorString(e_), cudaGetErrorName(e_)); \
      std::exit(1);                                                                       \
    }                                                                                     \
  } while (0)

// Trapped system calls, recorded by the SIGSYS handler.
std::atomic<int> g_trapped_n{0};
long g_trapped[256];
long g_trapped_arg0[256];

void on_sigsys(int, siginfo_t* info, void* ctx) {
  auto* uc = static_cast<ucontext_t*>(ctx);
  const int i = g_trapped_n.fetch_add(1);
  if (i < 256) {
    g_trapped[i] = info->si_syscall;
    g_trapped_arg0[i] = uc->uc_mcontext.gregs[REG_RDI];
  }
  const bool sock = info->si_syscall == __NR_socket || info->si_syscall == __NR_socketpair;
  uc->uc_mcontext.gregs[REG_RAX] = sock ? -EAFNOSUPPORT : -EPERM;
}

std::map<unsigned, std::string> char_device_groups() {
  std::map<unsigned, std::string> m;
  std::ifstream in("/proc/devices");
  std::string line;
  bool chars = false;
  while (std::getline(in, line)) {
    if (line.rfind("Character", 0) == 0) chars = true;
    else if (line.rfind("Block", 0) == 0) chars = false;
    else if (chars && !line.empty()) {
      std::istringstream is(line);
      unsigned major;
      std::string name;
      if (is >> major >> name) m[major] = name;
    }
  }
  return m;
}

void install_seccomp() {
  std::vector<sock_filter> f;
  auto stmt = [&](unsigned short code, unsigned k) { f.push_back(BPF_STMT(code, k)); };
  auto jump = [&](unsigned short code, unsigned k, unsigned char jt, unsigned char jf) {
    f.push_back(BPF_JUMP(code, k, jt, jf));
  };
  const unsigned kTrap = SECCOMP_RET_TRAP, kAllow = SECCOMP_RET_ALLOW;
  // SystemCallArchitectures=native.
  stmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch));
  jump(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0);
  stmt(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
  stmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr));
  // RestrictAddressFamilies=AF_UNIX: socket()/socketpair() of any other family traps.
  for (int nr : {__NR_socket, __NR_socketpair}) {
    jump(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 4);
    stmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, args[0]));
    jump(BPF_JMP | BPF_JEQ | BPF_K, AF_UNIX, 0, 1);
    stmt(BPF_RET | BPF_K, kAllow);
    stmt(BPF_RET | BPF_K, kTrap);
  }
  if (g_mdwe) {
    // MemoryDenyWriteExecute=: mmap with PROT_WRITE|PROT_EXEC, mprotect or
    // pkey_mprotect adding PROT_EXEC, shmat with SHM_EXEC.
    jump(BPF_JMP | BPF_JEQ | BPF_K, __NR_mmap, 0, 5);
    stmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, args[2]));
    stmt(BPF_ALU | BPF_AND | BPF_K, PROT_WRITE | PROT_EXEC);
    jump(BPF_JMP | BPF_JEQ | BPF_K, PROT_WRITE | PROT_EXEC, 0, 1);
    stmt(BPF_RET | BPF_K, kTrap);
    stmt(BPF_RET | BPF_K, kAllow);
    for (int nr : {__NR_mprotect, __NR_pkey_mprotect}) {
      jump(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 4);
      stmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, args[2]));
      jump(BPF_JMP | BPF_JSET | BPF_K, PROT_EXEC, 0, 1);
      stmt(BPF_RET | BPF_K, kTrap);
      stmt(BPF_RET | BPF_K, kAllow);
    }
    jump(BPF_JMP | BPF_JEQ | BPF_K, __NR_shmat, 0, 4);
    stmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, args[2]));
    jump(BPF_JMP | BPF_JSET | BPF_K, SHM_EXEC, 0, 1);
    stmt(BPF_RET | BPF_K, kTrap);
    stmt(BPF_RET | BPF_K, kAllow);
  }
  // SystemCallFilter=@system-service ~@privileged; rt_sigreturn always, so the
  // trap handler can return.
  stmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr));
  jump(BPF_JMP | BPF_JEQ | BPF_K, __NR_rt_sigreturn, 0, 1);
  stmt(BPF_RET | BPF_K, kAllow);
  for (int nr : kAllowed) {
    jump(BPF_JMP | BPF_JEQ | BPF_K, static_cast<unsigned>(nr), 0, 1);
    stmt(BPF_RET | BPF_K, kAllow);
  }
  stmt(BPF_RET | BPF_K, kTrap);

  struct sigaction sa{};
  sa.sa_sigaction = on_sigsys;
  sa.sa_flags = SA_SIGINFO;
  sigaction(SIGSYS, &sa, nullptr);
  sock_fprog prog{static_cast<unsigned short>(f.size()), f.data()};
  if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
    std::perror("FAIL seccomp");
    std::exit(1);
  }
}

int mount_setattr_ro(const char* path, bool ro) {
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
  struct {
    unsigned long long set, clr, propagation, userns_fd;
  } attr{ro ? 0x1ull : 0ull, ro ? 0ull : 0x1ull, 0, 0};  // MOUNT_ATTR_RDONLY
  return static_cast<int>(syscall(SYS_mount_setattr, AT_FDCWD, path, 0x8000 /*AT_RECURSIVE*/, &attr, sizeof attr));
}

void enter_sandbox() {
  if (unshare(CLONE_NEWNS | (skip("ipc") ? 0 : CLONE_NEWIPC) | (skip("net") ? 0 : CLONE_NEWNET)) != 0) {
    std::perror("FAIL unshare(mount, ipc, net)");
    std::exit(1);
  }
  mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr);
  // PrivateTmp: a fresh /tmp.
  if (!skip("tmp")) mount("tmpfs", "/tmp", "tmpfs", 0, "mode=1777");
  if (g_proc_subset) {
    if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "subset=pid,hidepid=invisible") != 0)
      std::perror("NOTE mount proc subset=pid");
  }
  // ProtectSystem=strict: everything read-only, then /dev, /proc, /tmp writable again.
  if (!skip("ro") && mount_setattr_ro("/", true) != 0) std::perror("NOTE mount_setattr / ro (ProtectSystem emulation skipped)");
  for (const char* p : {"/dev", "/proc", "/tmp"}) mount_setattr_ro(p, false);
  // ProtectKernelTunables: /proc/sys and /sys read-only.
  mount_setattr_ro("/proc/sys", true);
  mount_setattr_ro("/sys", true);
  rlimit unlimited{RLIM_INFINITY, RLIM_INFINITY};
  setrlimit(RLIMIT_MEMLOCK, &unlimited);
  if (!skip("uid") && (setgroups(0, nullptr) != 0 || setgid(65534) != 0 || setuid(65534) != 0)) {
    std::perror("FAIL dropping to uid 65534");
    std::exit(1);
  }
  prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
  if (!skip("seccomp")) install_seccomp();
}

void report_open_files(const std::map<unsigned, std::string>& groups) {
  std::set<std::string> seen;
  DIR* d = opendir("/proc/self/fd");
  while (dirent* e = d ? readdir(d) : nullptr) {
    if (e->d_name[0] == '.') continue;
    const int fd = std::atoi(e->d_name);
    struct stat st{};
    if (fstat(fd, &st) != 0) continue;
    if (S_ISCHR(st.st_mode)) {
      auto it = groups.find(major(st.st_rdev));
      char path[256] = {};
      readlink(("/proc/self/fd/" + std::string(e->d_name)).c_str(), path, sizeof path - 1);
      seen.insert(std::string("device ") + path + " char-" + (it == groups.end() ? "?" : it->second));
    } else if (S_ISSOCK(st.st_mode)) {
      int domain = -1;
      socklen_t len = sizeof domain;
      getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len);
      seen.insert("socket family " + std::to_string(domain));
    }
  }
  if (d) closedir(d);
  for (const auto& s : seen) std::printf("OPEN %s\n", s.c_str());
  std::ifstream maps("/proc/self/maps");
  std::string line;
  int wx = 0;
  while (std::getline(maps, line))
    if (line.find(" rwx") != std::string::npos) {
      ++wx;
      std::printf("WX %s\n", line.c_str());
    }
  std::printf("WX_MAPPINGS %d\n", wx);
}

int daemon_role(int from_producer) {
  const auto groups = char_device_groups();  // before /proc may be restricted
  if (g_sandbox) enter_sandbox();
  Handles h{};
  if (read(from_producer, &h, sizeof h) != static_cast<ssize_t>(sizeof h)) {
    std::fprintf(stderr, "FAIL reading handles\n");
    return 1;
  }
  // A segment as the daemon makes it: a sealed memory file (daemon/segment.cpp).
  const std::string name = "tensorshm.probe." + std::to_string(getpid());
  const int fd = memfd_create(name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0 || fchmod(fd, 0600) != 0 || ftruncate(fd, kBytes) != 0 ||
      fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0 || fallocate(fd, 0, 0, kBytes) != 0) {
    std::perror("FAIL memfd_create/fchmod/ftruncate/F_ADD_SEALS/fallocate");
    return 1;
  }
  void* host = mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  if (host == MAP_FAILED) {
    std::perror("FAIL mmap");
    return 1;
  }
  std::memset(host, 0, kBytes);
  CHECK_CUDA(cudaSetDevice(0));
  CHECK_CUDA(cudaHostRegister(host, kBytes, cudaHostRegisterDefault));
  void* dev = nullptr;
  CHECK_CUDA(cudaIpcOpenMemHandle(&dev, h.mem, cudaIpcMemLazyEnablePeerAccess));
  cudaEvent_t ev;
  CHECK_CUDA(cudaIpcOpenEventHandle(&ev, h.event));
  cudaStream_t s;
  CHECK_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  CHECK_CUDA(cudaStreamWaitEvent(s, ev, 0));
  CHECK_CUDA(cudaMemcpyAsync(host, dev, kBytes, cudaMemcpyDeviceToHost, s));
  CHECK_CUDA(cudaStreamSynchronize(s));
  const auto* b = static_cast<const unsigned char*>(host);
  for (size_t i = 0; i < kBytes; i += 4093)
    if (b[i] != 0x5A) {
      std::fprintf(stderr, "FAIL byte %zu is %#x, expected 0x5a\n", i, b[i]);
      return 1;
    }
  report_open_files(groups);
  CHECK_CUDA(cudaIpcCloseMemHandle(dev));
  CHECK_CUDA(cudaHostUnregister(host));
  const int n = g_trapped_n.load();
  std::set<std::string> refused;
  for (int i = 0; i < n && i < 256; ++i)
    refused.insert(std::string(syscall_name(g_trapped[i])) +
                   (g_trapped[i] == __NR_socket ? "(family " + std::to_string(g_trapped_arg0[i]) + ")" : ""));
  for (const auto& r : refused) std::printf("REFUSED %s\n", r.c_str());
  std::printf("OK copied %zu bytes from a producer's cudaMalloc into a pinned /dev/shm segment\n", kBytes);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--sandbox")) g_sandbox = true;
    else if (!std::strcmp(argv[i], "--mdwe")) g_mdwe = true;
    else if (!std::strcmp(argv[i], "--proc-subset")) g_proc_subset = true;
    else if (!std::strcmp(argv[i], "--share-event-shm")) g_share_event_shm = true;
    else if (!std::strncmp(argv[i], "--skip=", 7)) g_skip = argv[i] + 7;
  }
  int pipefd[2];
  if (pipe(pipefd) != 0) return 2;
  const pid_t child = fork();  // before CUDA is initialised in either process
  if (child == 0) {
    close(pipefd[1]);
    const int rc = daemon_role(pipefd[0]);
    std::fflush(stdout);
    _exit(rc);
  }
  close(pipefd[0]);
  CHECK_CUDA(cudaSetDevice(0));
  void* dev = nullptr;
  CHECK_CUDA(cudaMalloc(&dev, kBytes));
  CHECK_CUDA(cudaMemset(dev, 0x5A, kBytes));
  cudaEvent_t ev;
  CHECK_CUDA(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming | cudaEventInterprocess));
  CHECK_CUDA(cudaEventRecord(ev, 0));
  Handles h{};
  CHECK_CUDA(cudaIpcGetMemHandle(&h.mem, dev));
  CHECK_CUDA(cudaIpcGetEventHandle(&h.event, ev));
  if (g_share_event_shm) {
    char mine[64];
    std::snprintf(mine, sizeof mine, ".%x.", static_cast<unsigned>(getpid()));
    DIR* d = opendir("/dev/shm");
    while (dirent* e = d ? readdir(d) : nullptr) {
      const std::string n = e->d_name;
      if (n.rfind("cuda.shm.", 0) == 0 && n.find(mine) != std::string::npos) {
        std::printf("NOTE producer shares /dev/shm/%s\n", n.c_str());
        chmod(("/dev/shm/" + n).c_str(), 0666);
      }
    }
    if (d) closedir(d);
    std::fflush(stdout);
  }
  if (write(pipefd[1], &h, sizeof h) != static_cast<ssize_t>(sizeof h)) return 2;
  int status = 0;
  waitpid(child, &status, 0);
  CHECK_CUDA(cudaFree(dev));
  if (WIFSIGNALED(status)) {
    std::printf("FAIL daemon role killed by signal %d\n", WTERMSIG(status));
    return 1;
  }
  return WEXITSTATUS(status);
}
