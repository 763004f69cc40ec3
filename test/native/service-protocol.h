/* The wire constants of libfuse's contained-service protocol (shared/reference/
 * libfuse-service-protocol.md), shared by the test server and the test client. Test-only. */
#ifndef FUSE_SVC_TEST_SERVICE_PROTOCOL_H
#define FUSE_SVC_TEST_SERVICE_PROTOCOL_H
#include <stdint.h>

#define M(a, b, c, d) ((uint32_t)(a) << 24 | (uint32_t)(b) << 16 | (uint32_t)(c) << 8 | (uint32_t)(d))
#define HELLO_CMD M('S', 'A', 'F', 'T')
#define HELLO_REPLY M('L', 'A', 'S', 'T')
#define OPEN_CMD M('O', 'P', 'E', 'N')
#define BDEV_CMD M('B', 'D', 'E', 'V')
#define FSOPEN_CMD M('T', 'Y', 'P', 'E')
#define SOURCE_CMD M('N', 'A', 'M', 'E')
#define MNTOPTS_CMD M('O', 'P', 'T', 'S')
#define MNTPT_CMD M('M', 'N', 'T', 'P')
#define MOUNT_CMD M('D', 'O', 'I', 'T')
#define BYE_CMD M('B', 'Y', 'E', 'E')
#define MTAB_CMD M('M', 'T', 'A', 'B')
#define FILE_REPLY M('F', 'I', 'L', 'E')
#define SIMPLE_REPLY M('R', 'E', 'P', 'L')
#define ARGS_MAGIC M('A', 'R', 'G', 'S')
#define MAX_PACKET 65536
#ifndef SO_PASSRIGHTS
#define SO_PASSRIGHTS 83
#endif

#endif
