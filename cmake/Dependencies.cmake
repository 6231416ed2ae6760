# Everything comes from Debian's packages; .ci/install-deps installs them.
#
# POOLWORKER_STATIC_DEPS links OpenSSL and yaml-cpp from their static archives, and spdlog and
# fmt as headers: every shared library costs resident memory in each process (its relocated
# data, its GOT, the pages its loader touches), while from an archive only the objects used
# are linked in. glibc stays shared (dlopen of plugins, NSS).
option(POOLWORKER_STATIC_DEPS "Link OpenSSL and yaml-cpp statically, spdlog and fmt header-only" ON)

find_package(Threads REQUIRED)
find_package(Boost 1.74 REQUIRED COMPONENTS system)
if(POOLWORKER_STATIC_DEPS)
  set(OPENSSL_USE_STATIC_LIBS TRUE)
endif()
find_package(OpenSSL REQUIRED)
find_package(nlohmann_json 3.10 REQUIRED)
find_package(yaml-cpp REQUIRED)

# poolworker_yaml: yaml-cpp, from libyaml-cpp.a when static.
add_library(poolworker_yaml INTERFACE)
if(POOLWORKER_STATIC_DEPS)
  find_library(POOLWORKER_YAML_CPP_ARCHIVE NAMES libyaml-cpp.a REQUIRED)
  get_target_property(_yaml_includes yaml-cpp INTERFACE_INCLUDE_DIRECTORIES)
  target_include_directories(poolworker_yaml SYSTEM INTERFACE ${_yaml_includes})
  target_link_libraries(poolworker_yaml INTERFACE ${POOLWORKER_YAML_CPP_ARCHIVE})
else()
  target_link_libraries(poolworker_yaml INTERFACE yaml-cpp)
endif()

# poolworker_spdlog: spdlog with fmt, header-only when static (Debian ships neither archive).
add_library(poolworker_spdlog INTERFACE)
if(POOLWORKER_STATIC_DEPS)
  target_compile_definitions(poolworker_spdlog INTERFACE SPDLOG_FMT_EXTERNAL FMT_HEADER_ONLY=1)
  target_link_libraries(poolworker_spdlog INTERFACE Threads::Threads)
else()
  find_package(spdlog REQUIRED)
  target_link_libraries(poolworker_spdlog INTERFACE spdlog::spdlog)
endif()
