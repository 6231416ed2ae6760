#pragma once

namespace poolworker {
/// The version of poolworker, e.g. "0.1.0".
const char* version();
}  // namespace poolworker
