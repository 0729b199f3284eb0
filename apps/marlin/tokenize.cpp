// marlin tokenize: not yet implemented (issue: checkpoints and tokenizers).
#include "commands.h"
namespace marlin::cli {
void register_tokenize(CLI::App&) {}
}  // namespace marlin::cli
