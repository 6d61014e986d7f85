// tests/cuda/support_headers.hpp: tests/support's batch builder and config catalog, for the CUDA tests.
// nvcc's front end rewrites some of their host lambdas (a generic lambda, a range-for inside a lambda)
// with local typedefs that the host compiler's -Wall then reports as unused (-Wunused-local-typedefs);
// the pragma silences that one warning for these headers only, under nvcc only.
#pragma once

#if defined(__CUDACC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-local-typedefs"
#endif

#include "batch.hpp"
#include "catalog.hpp"

#if defined(__CUDACC__)
#pragma GCC diagnostic pop
#endif
