// Tokenizer: loads tokenizer.json + tokenizer_config.json and runs the pipeline of `tokenizers`:
// added tokens split out, normalizer, pre-tokenizer, BPE model, post-processor; and decoding.
#include "marlin/tokenizer.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "marlin/error.h"
#include "tokenizer_internal.h"

namespace marlin {
namespace tokenizer_detail {
namespace {

json read_json(const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) fail_file(file, "", "cannot open the file");
  std::stringstream buffer;
  buffer << in.rdbuf();
  try {
    return json::parse(buffer.str());
  } catch (const json::exception& e) {
    fail_file(file, "", std::string("invalid JSON: ") + e.what());
  }
}

// "bos_token": "<s>" or {"content": "<s>", ...} or null.
std::string special_token_content(const json& config, const char* key) {
  const json& v = config.value(key, json());
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string())
    return v["content"].get<std::string>();
  return {};
}

// The ids that the post_processor puts before and after the text of a single sequence.
void parse_post_processor(TokenizerImpl& t, const json& j, const std::string& where) {
  if (j.is_null()) return;
  const std::string type = j.value("type", std::string());
  if (type == "ByteLevel") return;  // only adjusts offsets
  if (type == "Sequence") {
    const json& steps = j.value("processors", json::array());
    for (size_t i = 0; i < steps.size(); ++i)
      parse_post_processor(t, steps[i], where + ".processors[" + std::to_string(i) + "]");
    return;
  }
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    // "cls": ["<s>", 0], "sep": ["</s>", 2]
    t.prefix_ids.push_back(j.at("cls").at(1).get<int32_t>());
    t.suffix_ids.push_back(j.at("sep").at(1).get<int32_t>());
    return;
  }
  if (type == "TemplateProcessing") {
    const json& single = j.at("single");
    const json& specials = j.value("special_tokens", json::object());
    bool seen_sequence = false;
    for (const json& item : single) {
      if (item.contains("Sequence")) {
        seen_sequence = true;
      } else if (item.contains("SpecialToken")) {
        const std::string name = item["SpecialToken"].at("id").get<std::string>();
        if (!specials.contains(name))
          fail_file(t.file, where, "template names special token \"" + name +
                                       "\" that special_tokens does not define");
        for (const json& id : specials[name].at("ids"))
          (seen_sequence ? t.suffix_ids : t.prefix_ids).push_back(id.get<int32_t>());
      }
    }
    return;
  }
  fail_file(t.file, where,
            "unsupported post_processor type \"" + type +
                "\" (supported: TemplateProcessing, BertProcessing, RobertaProcessing, ByteLevel, "
                "Sequence)");
}

}  // namespace

void load_tokenizer_json(TokenizerImpl& t, const json& root) {
  const std::string& file = t.file;
  if (!root.is_object()) fail_file(file, "", "the top level must be a JSON object");
  if (!root.contains("model") || !root["model"].is_object())
    fail_file(file, "model", "missing the \"model\" object");
  const json& model = root["model"];
  std::string type = model.value("type", std::string());
  if (type.empty() && model.contains("merges")) type = "BPE";  // files older than "type"
  if (type != "BPE")
    fail_file(file, "model.type", "unsupported model type \"" + type + "\" (supported: BPE)");
  t.model = std::make_unique<BpeModel>(model, file);
  t.normalizer = parse_normalizer(root.value("normalizer", json()), file, "normalizer");
  t.pre_tokenizer = parse_pre_tokenizer(root.value("pre_tokenizer", json()), file, "pre_tokenizer");
  t.decoder = parse_decoder(root.value("decoder", json()), file, "decoder");
  parse_post_processor(t, root.value("post_processor", json()), "post_processor");

  const json& added = root.value("added_tokens", json::array());
  if (!added.is_array()) fail_file(file, "added_tokens", "must be an array");
  for (size_t i = 0; i < added.size(); ++i) {
    const json& a = added[i];
    if (!a.is_object() || !a.contains("id") || !a.contains("content") || !a["content"].is_string() ||
        !a["id"].is_number_integer() || a["id"].get<int64_t>() < 0 || a["id"].get<int64_t>() > kMaxTokenId)
      fail_file(file, "added_tokens[" + std::to_string(i) + "]",
                "an added token needs an integer \"id\" in [0, " + std::to_string(kMaxTokenId) +
                    "] and a string \"content\"");
    const bool special = a.value("special", false);
    t.added_tokens.push_back({a["content"].get<std::string>(), a["id"].get<int32_t>(), special,
                              a.value("lstrip", false), a.value("rstrip", false),
                              a.value("single_word", false), a.value("normalized", !special)});
  }
  // The matchers see special tokens first, then the others (AddedVocabulary's order).
  std::stable_partition(t.added_tokens.begin(), t.added_tokens.end(),
                        [](const AddedToken& a) { return a.special; });

  int32_t size = 0;
  for (const auto& [token, id] : t.model->vocab()) size = std::max(size, id + 1);
  for (const AddedToken& a : t.added_tokens) size = std::max(size, a.id + 1);
  t.id_to_token.assign(static_cast<size_t>(size), std::string());
  t.id_known.assign(static_cast<size_t>(size), 0);
  t.id_special.assign(static_cast<size_t>(size), 0);
  for (const auto& [token, id] : t.model->vocab()) t.id_to_token[id] = token, t.id_known[id] = 1;
  std::vector<std::string> raw_patterns, normalized_patterns;
  for (const AddedToken& a : t.added_tokens) {
    t.id_to_token[a.id] = a.content;
    t.id_known[a.id] = 1;
    t.id_special[a.id] = a.special;
    t.added_by_content.emplace(a.content, a.id);
    std::string normalized = a.content;
    if (a.normalized && t.normalizer) t.normalizer->normalize(normalized);
    raw_patterns.push_back(a.normalized ? std::string() : a.content);
    normalized_patterns.push_back(a.normalized ? normalized : std::string());
  }
  t.raw_matcher.build(t.added_tokens, raw_patterns);
  t.normalized_matcher.build(t.added_tokens, normalized_patterns);
  for (const auto* ids : {&t.prefix_ids, &t.suffix_ids})
    for (const int32_t id : *ids)
      if (id < 0 || id >= size || !t.id_known[id])
        fail_file(file, "post_processor", "special token id " + std::to_string(id) +
                                              " is not in the vocabulary");
}

void load_tokenizer_config(TokenizerImpl& t, const std::string& file) {
  const json config = read_json(file);
  if (!config.is_object()) fail_file(file, "", "the top level must be a JSON object");
  auto lookup = [&](const char* key) -> std::optional<int32_t> {
    const std::string content = special_token_content(config, key);
    if (content.empty()) return std::nullopt;
    if (auto it = t.added_by_content.find(content); it != t.added_by_content.end()) return it->second;
    if (auto it = t.model->vocab().find(content); it != t.model->vocab().end()) return it->second;
    fail_file(file, key, std::string("token \"") + content + "\" is not in the vocabulary of " + t.file);
  };
  t.bos_id = lookup("bos_token");
  t.eos_id = lookup("eos_token");
  // Explicit add_bos_token / add_eos_token decide (Transformers' Llama tokenizers, llama.cpp).
  if (config.contains("add_bos_token") || config.contains("add_eos_token")) {
    auto flag = [&](const char* key) {
      const json& v = config.value(key, json());
      return v.is_boolean() && v.get<bool>();
    };
    t.prefix_ids.clear();
    t.suffix_ids.clear();
    if (flag("add_bos_token") && t.bos_id) t.prefix_ids.push_back(*t.bos_id);
    if (flag("add_eos_token") && t.eos_id) t.suffix_ids.push_back(*t.eos_id);
  }
}

void TokenizerImpl::encode_plain(std::string_view text, bool at_text_start,
                                 std::vector<int32_t>& out) const {
  std::string normalized(text);
  if (normalizer) normalizer->normalize(normalized);
  if (normalized.empty()) return;
  std::vector<AddedTokenMatcher::Segment> segments;
  if (normalized_matcher.empty())
    segments.push_back({0, normalized.size(), -1});
  else
    normalized_matcher.split(normalized, segments);
  PieceList list, scratch;
  for (const auto& segment : segments) {
    if (segment.token >= 0) {
      out.push_back(segment.token);
      continue;
    }
    if (segment.end == segment.begin) continue;
    list.text.assign(normalized, segment.begin, segment.end - segment.begin);
    list.pieces.assign(1, Piece{0, static_cast<uint32_t>(list.text.size()),
                                at_text_start && segment.begin == 0});
    if (pre_tokenizer) pre_tokenizer->pre_tokenize(list, scratch);
    for (const Piece& piece : list.pieces)
      model->encode_word(std::string_view(list.text).substr(piece.begin, piece.end - piece.begin), out);
  }
}

}  // namespace tokenizer_detail

using tokenizer_detail::TokenizerImpl;

Tokenizer::Tokenizer(std::shared_ptr<const TokenizerImpl> impl) : impl_(std::move(impl)) {}

Tokenizer Tokenizer::from_files(const std::string& tokenizer_json,
                                const std::string& tokenizer_config_json) {
  auto impl = std::make_shared<TokenizerImpl>();
  impl->file = tokenizer_json;
  const tokenizer_detail::json root = tokenizer_detail::read_json(tokenizer_json);
  const std::string* current = &tokenizer_json;
  try {
    tokenizer_detail::load_tokenizer_json(*impl, root);
    if (!tokenizer_config_json.empty()) {
      current = &tokenizer_config_json;
      tokenizer_detail::load_tokenizer_config(*impl, tokenizer_config_json);
    }
  } catch (const tokenizer_detail::json::exception& e) {
    // A field of the wrong JSON type deep inside: still name the file.
    tokenizer_detail::fail_file(*current, "", std::string("unexpected JSON content: ") + e.what());
  }
  return Tokenizer(std::move(impl));
}

Tokenizer Tokenizer::from_dir(const std::string& dir) {
  const std::filesystem::path root(dir);
  const std::filesystem::path config = root / "tokenizer_config.json";
  return from_files((root / "tokenizer.json").string(),
                    std::filesystem::exists(config) ? config.string() : std::string());
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  const TokenizerImpl& t = *impl_;
  std::string repaired;
  if (!tokenizer_detail::utf8_is_valid(text)) {
    repaired = tokenizer_detail::utf8_make_valid(text);
    text = repaired;
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (add_special_tokens) ids = t.prefix_ids;
  std::vector<tokenizer_detail::AddedTokenMatcher::Segment> segments;
  if (t.raw_matcher.empty())
    segments.push_back({0, text.size(), -1});
  else
    t.raw_matcher.split(text, segments);
  for (const auto& segment : segments) {
    if (segment.token >= 0)
      ids.push_back(segment.token);
    else if (segment.end > segment.begin)
      t.encode_plain(text.substr(segment.begin, segment.end - segment.begin), segment.begin == 0, ids);
  }
  if (add_special_tokens) ids.insert(ids.end(), t.suffix_ids.begin(), t.suffix_ids.end());
  return ids;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  const TokenizerImpl& t = *impl_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (const int32_t id : ids) {
    if (id < 0 || static_cast<size_t>(id) >= t.id_to_token.size() || !t.id_known[id]) continue;
    if (skip_special_tokens && t.id_special[id]) continue;
    tokens.push_back(t.id_to_token[id]);
  }
  std::string text;
  if (t.decoder) {
    t.decoder->decode_chain(tokens);
    for (const std::string& s : tokens) text += s;
  } else {
    for (size_t i = 0; i < tokens.size(); ++i) text.append(i ? " " : "").append(tokens[i]);
  }
  return tokenizer_detail::utf8_is_valid(text) ? text : tokenizer_detail::utf8_make_valid(text);
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  if (auto it = impl_->added_by_content.find(token); it != impl_->added_by_content.end())
    return it->second;
  if (auto it = impl_->model->vocab().find(token); it != impl_->model->vocab().end())
    return it->second;
  return std::nullopt;
}

std::optional<std::string> Tokenizer::id_to_token(int32_t id) const {
  if (id < 0 || id >= vocab_size() || !impl_->id_known[id]) return std::nullopt;
  return impl_->id_to_token[id];
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && id < vocab_size() && impl_->id_special[id];
}

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->id_to_token.size()); }
std::optional<int32_t> Tokenizer::bos_id() const { return impl_->bos_id; }
std::optional<int32_t> Tokenizer::eos_id() const { return impl_->eos_id; }

}  // namespace marlin
