// marlin preprocess: not yet implemented (issue: vision preprocessing).
#include "commands.h"
namespace marlin::cli {
void register_preprocess(CLI::App&) {}
}  // namespace marlin::cli
