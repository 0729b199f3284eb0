// Placeholder so the io layer exists before its first reader lands; delete when io has sources.
namespace marlin::io {
int io_layer_version() { return 1; }
}  // namespace marlin::io
