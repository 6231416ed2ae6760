#include "backends/process/launch_spec.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>

#include <sys/stat.h>
#include <unistd.h>

#include "backends/common/shell_split.h"

extern char** environ;

namespace poolworker::backends::process {
namespace {

namespace fs = std::filesystem;

constexpr char kDefaultPath[] = "/bin:/usr/bin";
constexpr char kTempAlphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789_";
constexpr size_t kTempRandomLength = 8;

Error invalid(std::string message) {
  return makeError(ErrorKind::InvalidConfiguration, std::move(message));
}

std::string lower(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

enum class FileCheck { Executable, Missing, Directory, NotExecutable };

FileCheck checkExecutable(const std::string& path) {
  struct stat info {};
  if (::stat(path.c_str(), &info) != 0) {
    return FileCheck::Missing;
  }
  if (S_ISDIR(info.st_mode)) {
    return FileCheck::Directory;
  }
  if (::access(path.c_str(), X_OK) != 0) {
    return FileCheck::NotExecutable;
  }
  return FileCheck::Executable;
}

std::string who(const LaunchSpec& spec) { return spec.default_command ? "interpreter" : "command"; }

std::string hint(const LaunchSpec& spec) {
  return spec.default_command
             ? " (set the process backend's 'python' option, or give the deployment a 'command')"
             : "";
}

std::string findEnv(const std::vector<std::string>& env, std::string_view name) {
  for (const auto& entry : env) {
    if (entry.size() > name.size() && entry.compare(0, name.size(), name) == 0 &&
        entry[name.size()] == '=') {
      return entry.substr(name.size() + 1);
    }
  }
  return {};
}

bool hasEnv(const std::vector<std::string>& env, std::string_view name) {
  return std::any_of(env.begin(), env.end(), [&](const std::string& entry) {
    return entry.size() > name.size() && entry.compare(0, name.size(), name) == 0 &&
           entry[name.size()] == '=';
  });
}

Result<std::vector<std::string>> commandFrom(const Json& configuration, const std::string& python,
                                             bool& is_default) {
  is_default = false;
  const auto it = configuration.find("command");
  if (it != configuration.end() && !it->is_null()) {
    if (!it->is_string()) {
      return invalid(std::string("job configuration 'command' must be a string or null, not ") +
                     it->type_name());
    }
    auto words = common::shellSplit(it->get_ref<const std::string&>());
    if (!words) {
      return invalid("job configuration 'command': " + words.error().message);
    }
    if (!words->empty()) {
      for (const auto& word : *words) {
        if (word.find('\0') != std::string::npos) {
          return invalid("job configuration 'command' contains a NUL character");
        }
      }
      return std::move(words).value();
    }
  }
  is_default = true;
  return std::vector<std::string>{python, "-m", "prefect.engine"};
}

Result<std::vector<std::string>> envFrom(const Json& configuration,
                                         const std::vector<std::string>& base_env) {
  std::map<std::string, std::string> merged;
  for (const auto& entry : base_env) {
    const size_t eq = entry.find('=');
    if (eq == std::string::npos || eq == 0) {
      continue;
    }
    merged.insert_or_assign(entry.substr(0, eq), entry.substr(eq + 1));
  }
  const auto it = configuration.find("env");
  if (it != configuration.end() && !it->is_null()) {
    if (!it->is_object()) {
      return invalid(std::string("job configuration 'env' must be an object, not ") +
                     it->type_name());
    }
    for (const auto& [name, value] : it->items()) {
      if (name.empty() || name.find('=') != std::string::npos ||
          name.find('\0') != std::string::npos) {
        return invalid("job configuration 'env': '" + name + "' is not a valid variable name");
      }
      if (value.is_null()) {
        merged.erase(name);
        continue;
      }
      if (!value.is_string()) {
        return invalid("job configuration 'env': variable '" + name +
                       "' must be a string or null, not " + value.type_name());
      }
      const auto& text = value.get_ref<const std::string&>();
      if (text.find('\0') != std::string::npos) {
        return invalid("job configuration 'env': variable '" + name + "' contains a NUL character");
      }
      merged.insert_or_assign(name, text);
    }
  }
  std::vector<std::string> env;
  env.reserve(merged.size());
  for (const auto& [name, value] : merged) {
    std::string entry = name;
    entry.append("=").append(value);
    env.push_back(std::move(entry));
  }
  return env;
}

Result<std::string> workingDirFrom(const Json& configuration) {
  const auto it = configuration.find("working_dir");
  if (it == configuration.end() || it->is_null()) {
    return std::string();
  }
  if (!it->is_string()) {
    return invalid(std::string("job configuration 'working_dir' must be a string or null, not ") +
                   it->type_name());
  }
  const auto& given = it->get_ref<const std::string&>();
  if (given.empty()) {
    return std::string();
  }
  std::error_code error;
  const fs::path absolute = fs::absolute(fs::path(given), error).lexically_normal();
  if (error) {
    return invalid("job configuration 'working_dir': cannot resolve '" + given +
                   "': " + error.message());
  }
  struct stat info {};
  if (::stat(absolute.c_str(), &info) != 0) {
    const int stat_error = errno;
    if (stat_error == ENOENT || stat_error == ENOTDIR) {
      return invalid("job configuration 'working_dir': directory '" + absolute.string() +
                     "' does not exist");
    }
    return invalid("job configuration 'working_dir': directory '" + absolute.string() +
                   "' cannot be accessed: " + std::strerror(stat_error));
  }
  if (!S_ISDIR(info.st_mode)) {
    return invalid("job configuration 'working_dir': '" + absolute.string() +
                   "' is not a directory");
  }
  std::string text = absolute.string();
  if (text.size() > 1 && text.back() == '/') {
    text.pop_back();
  }
  return text;
}

}  // namespace

Result<bool> parseLaxBool(const Json& value, std::string_view field) {
  if (value.is_boolean()) {
    return value.get<bool>();
  }
  if (value.is_number()) {
    const double number = value.get<double>();
    if (number == 0.0) {
      return false;
    }
    if (number == 1.0) {
      return true;
    }
  } else if (value.is_string()) {
    const std::string text = lower(value.get_ref<const std::string&>());
    if (text == "1" || text == "true" || text == "t" || text == "yes" || text == "y" ||
        text == "on") {
      return true;
    }
    if (text == "0" || text == "false" || text == "f" || text == "no" || text == "n" ||
        text == "off") {
      return false;
    }
  }
  return invalid("job configuration '" + std::string(field) + "' must be a boolean, not " +
                 value.dump());
}

Result<LaunchSpec> buildLaunchSpec(const Json& configuration, const std::string& python,
                                   const std::vector<std::string>& base_env) {
  if (!configuration.is_object()) {
    return invalid(std::string("job configuration must be an object, not ") +
                   configuration.type_name());
  }
  LaunchSpec spec;
  auto argv = commandFrom(configuration, python, spec.default_command);
  if (!argv) {
    return std::move(argv).error();
  }
  spec.argv = std::move(argv).value();
  auto env = envFrom(configuration, base_env);
  if (!env) {
    return std::move(env).error();
  }
  spec.env = std::move(env).value();
  auto working_dir = workingDirFrom(configuration);
  if (!working_dir) {
    return std::move(working_dir).error();
  }
  spec.working_dir = std::move(working_dir).value();
  const auto stream = configuration.find("stream_output");
  if (stream != configuration.end()) {
    auto flag = parseLaxBool(*stream, "stream_output");
    if (!flag) {
      return std::move(flag).error();
    }
    spec.stream_output = *flag;
  }
  return spec;
}

Result<void> resolveProgram(LaunchSpec& spec) {
  const std::string& name = spec.argv.front();
  if (name.empty()) {
    return invalid("job configuration 'command': the program name is empty");
  }
  const fs::path cwd(spec.working_dir);
  if (name.find('/') != std::string::npos) {
    const fs::path path =
        (fs::path(name).is_absolute() ? fs::path(name) : cwd / name).lexically_normal();
    switch (checkExecutable(path.string())) {
      case FileCheck::Executable:
        spec.program = path.string();
        return success();
      case FileCheck::Missing:
        return invalid(who(spec) + " '" + path.string() + "' does not exist" + hint(spec));
      case FileCheck::Directory:
        return invalid(who(spec) + " '" + path.string() + "' is a directory" + hint(spec));
      case FileCheck::NotExecutable:
        return invalid(who(spec) + " '" + path.string() + "' is not executable" + hint(spec));
    }
  }
  const std::string search =
      hasEnv(spec.env, "PATH") ? findEnv(spec.env, "PATH") : std::string(kDefaultPath);
  std::string not_executable;
  size_t begin = 0;
  while (begin <= search.size()) {
    size_t end = search.find(':', begin);
    if (end == std::string::npos) {
      end = search.size();
    }
    // An empty entry means the current directory, which is the child's working directory.
    const std::string entry = search.substr(begin, end - begin);
    const fs::path dir =
        entry.empty() ? cwd : (fs::path(entry).is_absolute() ? fs::path(entry) : cwd / entry);
    const fs::path candidate = dir / name;
    const FileCheck check = checkExecutable(candidate.string());
    if (check == FileCheck::Executable) {
      spec.program = candidate.lexically_normal().string();
      return success();
    }
    if (check == FileCheck::NotExecutable && not_executable.empty()) {
      not_executable = candidate.lexically_normal().string();
    }
    begin = end + 1;
  }
  if (!not_executable.empty()) {
    return invalid(who(spec) + " '" + name + "' found at '" + not_executable +
                   "' is not executable" + hint(spec));
  }
  return invalid(who(spec) + " '" + name + "' not found on PATH" + hint(spec));
}

std::string describeExecError(const LaunchSpec& spec, int error) {
  const std::string subject = who(spec) + " '" + spec.program + "'";
  switch (error) {
    case EACCES:
      return subject + " is not executable";
    case ENOEXEC:
      return subject + " is not a program this system can run (a script needs a '#!' line)";
    case ENOENT:
      if (checkExecutable(spec.program) == FileCheck::Executable) {
        return subject +
               " could not be executed: the interpreter named on its '#!' line does "
               "not exist";
      }
      return subject + " does not exist";
    case E2BIG:
      return subject + " could not be executed: its arguments and environment are too long";
    default:
      return subject + " could not be executed: " + std::strerror(error);
  }
}

std::vector<std::string> currentEnvironment() {
  std::vector<std::string> env;
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    env.emplace_back(*entry);
  }
  return env;
}

Result<std::string> createTempWorkingDir() {
  const char* tmpdir = std::getenv("TMPDIR");
  std::string parent = (tmpdir != nullptr && *tmpdir != '\0') ? tmpdir : "/tmp";
  std::error_code ignored;
  parent = fs::absolute(fs::path(parent), ignored).lexically_normal().string();
  if (parent.size() > 1 && parent.back() == '/') {
    parent.pop_back();
  }
  thread_local std::mt19937_64 random{std::random_device{}()};
  std::uniform_int_distribution<size_t> pick(0, sizeof(kTempAlphabet) - 2);
  int last_error = 0;
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::string name = "tmp";
    for (size_t i = 0; i < kTempRandomLength; ++i) {
      name.push_back(kTempAlphabet[pick(random)]);
    }
    name += "prefect";
    std::string path = parent;
    path.append("/").append(name);
    if (::mkdir(path.c_str(), 0700) == 0) {
      return path;
    }
    last_error = errno;
    if (last_error != EEXIST) {
      break;
    }
  }
  return makeError(ErrorKind::InfrastructureFailed,
                   "cannot create a temporary working directory under '" + parent +
                       "': " + std::strerror(last_error));
}

bool isTempWorkingDirName(const std::string& path) {
  const fs::path p(path);
  if (!p.is_absolute()) {
    return false;
  }
  const std::string name = p.filename().string();
  const size_t expected = 3 + kTempRandomLength + 7;
  if (name.size() != expected || name.compare(0, 3, "tmp") != 0 ||
      name.compare(name.size() - 7, 7, "prefect") != 0) {
    return false;
  }
  return std::all_of(name.begin() + 3, name.end() - 7,
                     [](char c) { return std::strchr(kTempAlphabet, c) != nullptr && c != '\0'; });
}

}  // namespace poolworker::backends::process
