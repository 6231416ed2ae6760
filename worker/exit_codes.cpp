#include "worker/exit_codes.h"

namespace poolworker::exit_codes {

std::string explain(int code) {
  switch (code) {
    case 0:
      return "The process ended normally.";
    case -9:
      return "The process was killed by SIGKILL, usually by the kernel for using too much memory, "
             "or by a forced cancellation.";
    case -15:
      return "The process was stopped by SIGTERM, usually by a shutdown or a cancellation.";
    case 1:
      return "The process ended with a general error.";
    case 125:
      return "The container could not be run (exit code 125 from the container runtime).";
    case 126:
      return "The command was found but could not be executed.";
    case 127:
      return "The command was not found.";
    case 137:
      return "The process was killed (SIGKILL), most likely for running out of memory.";
    case 143:
      return "The process was stopped by SIGTERM through the container runtime.";
    case 247:
      return "The process was stopped for using too much memory.";
    default:
      return "The process exited with an unexpected status code.";
  }
}

std::string resolution(int code) {
  switch (code) {
    case -9:
    case 137:
    case 247:
      return "If the run was not cancelled on purpose, give it more memory.";
    case -15:
    case 143:
      return "If the run was not cancelled or shut down on purpose, look for whatever stopped "
             "the infrastructure.";
    case 1:
      return "Look in the flow run's logs for the exception that ended it.";
    case 125:
      return "Check that the image exists and that the container runtime is healthy.";
    case 126:
      return "Check the permissions of the command or script.";
    case 127:
      return "Check that the command, or the Python interpreter with prefect installed, is on "
             "the PATH of the run.";
    default:
      return "Look in the flow run's logs and the worker's output for what happened.";
  }
}

bool isQuiet(int code) { return code == -9 || code == -15 || code == 143 || code == 0; }

}  // namespace poolworker::exit_codes
