// Between the fake driver (emu/driver.cpp) and the scheduler (emu/runtime.cpp).
#pragma once
#include <stddef.h>

struct EmuKernel;

// The registered kernel of that name, or null.
const EmuKernel* emu_find_kernel(const char* name);

// Runs a whole grid now. Returns null, or why the launch is refused (nothing ran then).
const char* emu_run_kernel(const EmuKernel* k, void* packed, const unsigned grid[3], const unsigned block[3],
                           size_t dynamic_shared);
