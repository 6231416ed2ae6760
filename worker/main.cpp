// poolworker's entry point; everything else is in poolworker_core so that tests share it.

#include "worker/cli.h"

int main(int argc, char** argv) { return poolworker::cli::main(argc, argv); }
