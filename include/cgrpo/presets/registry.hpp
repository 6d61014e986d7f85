// cgrpo/presets/registry.hpp: every preset by name ("paper/critique_grpo", "verl/grpo", "trl/dapo", ...),
// so a trainer can pick its recipe from a string in its own config.
#pragma once

#include <string.h>

#include "cgrpo/base/status.hpp"
#include "cgrpo/presets/paper.hpp"
#include "cgrpo/presets/recipe.hpp"
#include "cgrpo/presets/trl_presets.hpp"
#include "cgrpo/presets/verl_presets.hpp"

namespace cgrpo {

// The registry: each peer's list, in the order above. preset_count() entries, preset_at(i) each.
namespace detail {
struct PresetList {
  const PresetEntry* entries;
  int count;
};
template <int N>
constexpr PresetList list_of(const PresetEntry (&e)[N]) {
  return PresetList{e, N};
}
inline constexpr PresetList kPresetLists[] = {list_of(kPaperPresets), list_of(kVerlPresets), list_of(kTrlPresets)};
}  // namespace detail

inline int preset_count() {
  int n = 0;
  for (const detail::PresetList& l : detail::kPresetLists) n += l.count;
  return n;
}

// The i-th preset (0 <= i < preset_count()), or nullptr.
inline const PresetEntry* preset_at(int i) {
  for (const detail::PresetList& l : detail::kPresetLists) {
    if (i >= 0 && i < l.count) return &l.entries[i];
    i -= l.count;
  }
  return nullptr;
}

// The recipe of the preset named `name`. A verl preset takes the actor whose conventions it follows
// as a suffix: "verl/grpo" (the engine's, verl 1dda039), "verl/grpo@engine", or
// "verl/grpo@legacy_dp_actor" (b178a3c's dp_actor; VerlActor). An unknown name or suffix is
// invalid_argument, and the message lists the names it knows (as far as they fit); *out is written
// only on success.
inline Status preset(const char* name, Recipe* out) {
  if (!out) return make_error(StatusCode::invalid_argument, "preset: out must not be null");
  const char* at = name ? strchr(name, '@') : nullptr;
  const size_t base_length = name ? (at ? static_cast<size_t>(at - name) : strlen(name)) : 0;
  for (int i = 0; name && i < preset_count(); ++i) {
    const char* entry = preset_at(i)->name;
    if (strlen(entry) != base_length || strncmp(entry, name, base_length) != 0) continue;
    if (!at) {
      *out = preset_at(i)->make();
      return Status::success();
    }
    if (strncmp(entry, "verl/", 5) != 0)
      return make_error(StatusCode::invalid_argument,
                        "preset \"%s\": only verl presets take an actor suffix (@engine, @legacy_dp_actor)", name);
    const char* actor = at + 1;
    if (strcmp(actor, "engine") != 0 && strcmp(actor, "legacy_dp_actor") != 0)
      return make_error(StatusCode::invalid_argument,
                        "preset \"%s\": unknown verl actor \"%s\" (expected engine or legacy_dp_actor)", name, actor);
    *out = verl_with_actor(preset_at(i)->make(),
                           strcmp(actor, "engine") == 0 ? VerlActor::engine : VerlActor::legacy_dp_actor);
    return Status::success();
  }
  Status s = make_error(StatusCode::invalid_argument, "preset \"%s\" is unknown; known:", name ? name : "(null)");
  for (int i = 0; i < preset_count(); ++i) {
    const size_t used = strlen(s.message), room = sizeof(s.message) - used;
    if (strlen(preset_at(i)->name) + 2 >= room) break;
    snprintf(s.message + used, room, " %s", preset_at(i)->name);
  }
  return s;
}

}  // namespace cgrpo
