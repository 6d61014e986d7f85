// cgrpo/base/variant_table.hpp: the macros every variant table uses. A table is one X-macro list
// X(enum name, struct) per kind of variant (policy terms, KL estimators, aggregation modes, ...):
// the enum, its count, its names and every dispatch are generated from that one list.
#pragma once

// Inside `enum class E : int { TABLE(CGRPO_VARIANT_ENUM_ENTRY) };`: one enumerator per row, in order.
#define CGRPO_VARIANT_ENUM_ENTRY(name, Type) name,
// Inside `constexpr int kCount = 0 TABLE(CGRPO_VARIANT_COUNT_ENTRY);`: the number of rows.
#define CGRPO_VARIANT_COUNT_ENTRY(name, Type) +1
