#include "worker/version.h"

namespace poolworker {
const char* version() { return POOLWORKER_VERSION; }
}  // namespace poolworker
