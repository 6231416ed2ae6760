#pragma once

/// @file
/// @brief Prefect's job-template language: `{{ placeholder }}` discovery, `apply_values`, and
/// the resolution of block documents and Prefect variables (contract sections 7.1 to 7.6).
///
/// Everything here is pure: the worker fetches the block documents and variables that
/// `collectReferences` names and hands them to `resolveReferences`, so these rules are tested
/// without a server.

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <poolworker/json.h>
#include <poolworker/result.h>

namespace poolworker::templating {

/// @brief What a placeholder refers to, decided by the prefix of its name.
enum class PlaceholderType {
  /// A job variable, looked up in the values (`{{ image }}`, `{{ env.FOO }}`).
  Standard,
  /// `{{ prefect.blocks.<type-slug>.<document-name>[.<keypath>] }}`.
  BlockDocument,
  /// `{{ prefect.variables.<name> }}`.
  Variable,
  /// `{{ $NAME }}`: the worker's own environment variable `NAME`.
  EnvVar,
};

/// @brief One placeholder found in a string.
struct Placeholder {
  /// The exact text matched, braces and inner whitespace included (`"{{ x }}"`).
  std::string full_match;
  /// The name between the braces (`"x"`).
  std::string name;
  /// What the name refers to.
  PlaceholderType type = PlaceholderType::Standard;
};

/// @brief The type of a placeholder name: `prefect.blocks.` → BlockDocument,
/// `prefect.variables.` → Variable, `$` → EnvVar, anything else → Standard.
/// @param name A placeholder name.
/// @return Its type.
PlaceholderType placeholderType(std::string_view name);

/// @brief The distinct placeholders of `text`, in order of first appearance.
///
/// A placeholder is `{{`, optional whitespace, a name of word characters (Unicode) and
/// `.-[]$`, optional whitespace, `}}`. Prefect returns a set; this order is fixed left to right.
/// @param text Any UTF-8 text.
/// @return The placeholders; two that differ only in inner whitespace are distinct.
std::vector<Placeholder> findPlaceholders(std::string_view text);

/// @brief Prefect's `get_from_dict`: looks up a dotted path such as `a.b[1]` in `values`.
///
/// `[` counts as `.` and `]` is dropped. A segment that Python's `int()` accepts indexes an
/// array or a string (by code point; negative indexes count from the end); any other segment
/// is an object key. A missing key, a bad index or a type mismatch means "not set".
/// @param values Where to look.
/// @param dotted_path The path.
/// @return The value (which may be JSON null), or nullopt when it is not set.
std::optional<Json> getFromDict(const Json& values, std::string_view dotted_path);

/// @brief Reads an environment variable; nullopt when it is not set.
using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;

/// @brief An `EnvLookup` over the environment of this process (what Prefect's worker uses).
/// @return A lookup valid for the life of the program.
const EnvLookup& processEnvironment();

/// @brief An `EnvLookup` over a fixed set of variables, for tests and dry runs.
/// @param variables Name → value.
/// @return A lookup that sees exactly `variables`.
EnvLookup fixedEnvironment(std::map<std::string, std::string> variables);

/// @brief Prefect's `apply_values(template, values, remove_notset)`.
///
/// Null, numbers and booleans are returned as they are. A string that is exactly one Standard
/// placeholder becomes the looked-up value with its JSON type, or NotSet when the value is not
/// set. Any other string with placeholders becomes a string: Standard placeholders are replaced
/// with Python `str()` of their value, `{{ $NAME }}` with the environment variable, and block and
/// variable placeholders are left for `resolveReferences`; a value that is not set is replaced
/// with `""` when `remove_notset` is true and left as it is otherwise. The string is scanned once,
/// left to right: substituted text is never scanned again. Objects keep their key order and lose
/// keys whose value is NotSet (with `remove_notset` false they keep the original template text);
/// arrays always drop NotSet items. Keys are never templated.
/// @param tmpl The template.
/// @param values The variables, usually an object.
/// @param remove_notset Whether unresolved placeholders and keys are removed.
/// @param env Where `{{ $NAME }}` is looked up.
/// @return The result, or nullopt for Prefect's NotSet (only when `tmpl` itself is a whole-value
/// placeholder whose value is not set).
std::optional<Json> applyValues(const Json& tmpl, const Json& values, bool remove_notset = true,
                                const EnvLookup& env = processEnvironment());

/// @brief Everything a configuration refers to that lives on the Prefect server.
struct References {
  /// Ids from `{"$ref": {"block_document_id": "<id>"}}` objects.
  std::vector<std::string> block_document_ids;
  /// (block type slug, block document name) from `{{ prefect.blocks.<slug>.<name>... }}`.
  std::vector<std::pair<std::string, std::string>> block_slug_names;
  /// Names from `{{ prefect.variables.<name> }}`.
  std::vector<std::string> variable_names;
};

/// @brief Lists the block documents and variables that `config` refers to, without duplicates,
/// in order of first appearance.
///
/// A block document's data may itself contain `{{ prefect.variables.* }}` placeholders, which
/// Prefect resolves too (the variables pass runs after the blocks pass). To see those, call
/// `collectReferences` again on the result of `resolveBlocks`.
/// @param config A templated job configuration (the result of `applyValues`).
/// @return The references.
References collectReferences(const Json& config);

/// @brief The server's answers for the references of a configuration.
struct ResolvedReferences {
  /// The `data` object of each block document, by id. An id that is absent does not exist.
  std::map<std::string, Json> blocks_by_id;
  /// The `data` object of each block document, by (type slug, name). Absent = does not exist.
  std::map<std::pair<std::string, std::string>, Json> blocks_by_slug_name;
  /// The value of each variable, by name. An absent name is a missing variable.
  std::map<std::string, Json> variables;
};

/// @brief Prefect's `resolve_block_document_references` (contract section 7.5, "Blocks").
///
/// `{"$ref": {"block_document_id": id}}` objects become the document's data. A string that is
/// exactly one block placeholder becomes the value it names, JSON type preserved; the data of a
/// document whose only key is `value` is unwrapped unless the keypath starts with `value`.
/// Block placeholders inside longer strings are replaced with Python `str()` of a scalar value.
/// Other placeholders are left alone.
/// @param config A templated configuration.
/// @param resolved The fetched block documents.
/// @return The configuration, or an InvalidConfiguration error naming the placeholder and
/// where it is, for: a missing block document, a keypath that is not found, a dict or list
/// placeholder inside a longer string, a name with fewer than two segments, a malformed `$ref`.
Result<Json> resolveBlocks(const Json& config, const ResolvedReferences& resolved);

/// @brief Prefect's `resolve_variables` (contract section 7.5, "Variables").
///
/// A string that is exactly one variable placeholder becomes the variable's value, JSON type
/// preserved, or `""` when the variable is missing. Inside a longer string the placeholder is
/// replaced with Python `str()` of the value, or `""` when it is missing.
/// @param config A configuration, usually the result of `resolveBlocks`.
/// @param variables The fetched variables by name; an absent name is a missing variable.
/// @return The configuration with every variable placeholder replaced.
Json resolveVariables(const Json& config, const std::map<std::string, Json>& variables);

/// @brief The second and third passes of Prefect's templating: `resolveBlocks`, then
/// `resolveVariables`.
/// @param config A templated configuration (the result of `applyValues`).
/// @param resolved The fetched block documents and variables.
/// @return The resolved configuration or an InvalidConfiguration error (see `resolveBlocks`).
Result<Json> resolveReferences(const Json& config, const ResolvedReferences& resolved);

}  // namespace poolworker::templating
