// The structs in bpf/shared/meshtls_maps.h must mean the same thing to the BPF programs and to
// C++: checked against the BTF the compiler wrote into the BPF object, member by member.
#include <bpf/btf.h>
#include <bpf/libbpf.h>

#include <cstddef>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "meshtls/bpf/cgroup_sock_addr.skel.h"
#include "meshtls/datapath/bpf_skeleton.h"
#include "meshtls_maps.h"

namespace meshtls::datapath {

MESHTLS_BPF_SKELETON(cgroup_sock_addr);

namespace {

static_assert(sizeof(meshtls_workload) == 8);
static_assert(sizeof(meshtls_endpoint4) == 4);
static_assert(sizeof(meshtls_endpoint6) == 16);
static_assert(sizeof(meshtls_connection_key) == 32);
static_assert(sizeof(meshtls_original_destination) == 24);
static_assert(offsetof(meshtls_original_destination, port) == 20);
static_assert(sizeof(meshtls_leg_key) == 48);
static_assert(offsetof(meshtls_leg_key, local_port) == 40);

struct Member {
  std::string name;
  size_t offset;
};

void ExpectLayout(const btf* types, const char* name, size_t size, const std::vector<Member>& members) {
  const int id = btf__find_by_name_kind(types, name, BTF_KIND_STRUCT);
  ASSERT_GT(id, 0) << name << " is not in the BPF object's BTF";
  const btf_type* t = btf__type_by_id(types, id);
  EXPECT_EQ(t->size, size) << name;
  ASSERT_EQ(btf_vlen(t), members.size()) << name;
  const btf_member* m = btf_members(t);
  for (size_t i = 0; i < members.size(); ++i) {
    EXPECT_EQ(btf__name_by_offset(types, m[i].name_off), members[i].name) << name;
    EXPECT_EQ(btf_member_bit_offset(t, static_cast<uint32_t>(i)), members[i].offset * 8) << name << "." << members[i].name;
  }
}

TEST(SharedStructsTest, CppAndBpfLayoutsAgree) {
  btf* types = btf__parse(MESHTLS_BPF_OBJECT_DIR "/cgroup_sock_addr.bpf.o", nullptr);
  ASSERT_NE(types, nullptr);
  ExpectLayout(types, "meshtls_workload", sizeof(meshtls_workload),
               {{"workload_index", offsetof(meshtls_workload, workload_index)},
                {"mode", offsetof(meshtls_workload, mode)},
                {"reserved", offsetof(meshtls_workload, reserved)}});
  ExpectLayout(types, "meshtls_endpoint4", sizeof(meshtls_endpoint4), {{"addr", 0}});
  ExpectLayout(types, "meshtls_endpoint6", sizeof(meshtls_endpoint6), {{"addr", 0}});
  ExpectLayout(types, "meshtls_connection_key", sizeof(meshtls_connection_key),
               {{"netns_cookie", offsetof(meshtls_connection_key, netns_cookie)},
                {"addr", offsetof(meshtls_connection_key, addr)},
                {"port", offsetof(meshtls_connection_key, port)},
                {"family", offsetof(meshtls_connection_key, family)},
                {"reserved", offsetof(meshtls_connection_key, reserved)}});
  ExpectLayout(types, "meshtls_original_destination", sizeof(meshtls_original_destination),
               {{"addr4", offsetof(meshtls_original_destination, addr4)},
                {"addr6", offsetof(meshtls_original_destination, addr6)},
                {"port", offsetof(meshtls_original_destination, port)},
                {"family", offsetof(meshtls_original_destination, family)}});
  btf__free(types);
}

TEST(SharedStructsTest, TheLocalLegKeyAgreesWithTheShortcutProgram) {
  btf* types = btf__parse(MESHTLS_BPF_OBJECT_DIR "/local_leg.bpf.o", nullptr);
  ASSERT_NE(types, nullptr);
  ExpectLayout(types, "meshtls_leg_key", sizeof(meshtls_leg_key),
               {{"netns_cookie", offsetof(meshtls_leg_key, netns_cookie)},
                {"local_addr", offsetof(meshtls_leg_key, local_addr)},
                {"remote_addr", offsetof(meshtls_leg_key, remote_addr)},
                {"local_port", offsetof(meshtls_leg_key, local_port)},
                {"remote_port", offsetof(meshtls_leg_key, remote_port)},
                {"family", offsetof(meshtls_leg_key, family)},
                {"reserved", offsetof(meshtls_leg_key, reserved)}});
  btf__free(types);
}

TEST(SharedStructsTest, SkeletonOpensWithoutLoading) {
  auto skeleton = BpfSkeleton<cgroup_sock_addr>::Open();
  ASSERT_TRUE(skeleton.ok()) << skeleton.status();
  EXPECT_EQ((*skeleton)->rodata->outbound_port, 15001);
  EXPECT_NE((*skeleton)->progs.meshtls_connect4, nullptr);
  EXPECT_EQ(bpf_map__max_entries((*skeleton)->maps.meshed_cgroups), static_cast<uint32_t>(MESHTLS_MAX_CGROUPS));
}

}  // namespace
}  // namespace meshtls::datapath
