# marlin_add_layer(NAME DIRS dir... [CUDA_DIRS dir...] [DEPS target...])
# One static library per layer of DESIGN.md, built from every .cpp under src/<dir> (and .cu/.cpp
# under the CUDA dirs when the CUDA backend is on). New files are picked up without editing here.
function(marlin_add_layer name)
  cmake_parse_arguments(L "" "" "DIRS;CUDA_DIRS;DEPS" ${ARGN})
  set(sources)
  foreach(dir ${L_DIRS})
    file(GLOB found CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/src/${dir}/*.cpp)
    list(APPEND sources ${found})
  endforeach()
  if(MARLIN_WITH_CUDA)
    foreach(dir ${L_CUDA_DIRS})
      file(GLOB found CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/src/${dir}/*.cu
                                        ${PROJECT_SOURCE_DIR}/src/${dir}/*.cpp)
      list(APPEND sources ${found})
    endforeach()
  endif()
  add_library(marlin_${name} STATIC ${sources})
  target_include_directories(marlin_${name}
      PUBLIC ${PROJECT_SOURCE_DIR}/include
      PRIVATE ${PROJECT_SOURCE_DIR}/src)
  target_link_libraries(marlin_${name} PUBLIC ${L_DEPS})
  if(MARLIN_WITH_CUDA)
    target_compile_definitions(marlin_${name} PUBLIC MARLIN_WITH_CUDA=1)
  endif()
endfunction()

# marlin_add_test_binary(NAME DIR [LABELS label...] [DEPS target...])
# One GoogleTest binary per tests/<dir>, registered with CTest as a single test.
function(marlin_add_test_binary name dir)
  cmake_parse_arguments(T "" "" "LABELS;DEPS" ${ARGN})
  file(GLOB sources CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/tests/${dir}/*.cpp
                                      ${PROJECT_SOURCE_DIR}/tests/${dir}/*.cu)
  add_executable(${name} ${sources})
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/src ${PROJECT_SOURCE_DIR}/tests)
  target_link_libraries(${name} PRIVATE ${T_DEPS} GTest::gtest GTest::gtest_main)
  target_compile_definitions(${name} PRIVATE
      MARLIN_TEST_FIXTURES="${PROJECT_SOURCE_DIR}/tests/fixtures"
      MARLIN_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
  add_test(NAME ${name} COMMAND ${name} --gtest_brief=1)
  set_tests_properties(${name} PROPERTIES LABELS "${T_LABELS}" TIMEOUT 1800)
endfunction()
