function(poolworker_set_warnings target)
  target_compile_options(${target} INTERFACE
    -Wall -Wextra -Werror -Wpedantic -Wshadow -Wnon-virtual-dtor -Wold-style-cast
    -Wcast-align -Wunused -Woverloaded-virtual -Wformat=2 -Wimplicit-fallthrough)
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    # GCC 12 at -O2 reports false positives inside Boost.Asio's own headers, after inlining, where
    # system-header suppression no longer applies: -Wnull-dereference in the epoll reactor and
    # -Wmismatched-new-delete on the coroutine frame allocator (operator new/delete of
    # awaitable_frame_base, which do match).
    target_compile_options(${target} INTERFACE -Wno-mismatched-new-delete)
  endif()
endfunction()
