// poolworker's entry point; everything else is in poolworker_core so that tests share it.

#include <sys/resource.h>

#include "worker/cli.h"

namespace {

// Each followed Kubernetes log and each Docker wait or log stream holds a connection, so a
// worker with a thousand runs in flight needs more descriptors than the usual soft limit of
// 1024. Raise the soft limit to the hard one, as Go programs and many daemons do.
void raiseFileLimit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    (void)setrlimit(RLIMIT_NOFILE, &limit);
  }
}

}  // namespace

int main(int argc, char** argv) {
  raiseFileLimit();
  return poolworker::cli::main(argc, argv);
}
