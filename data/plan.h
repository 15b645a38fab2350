/*
 * data/plan.h — `loom data plan`: the curriculum integrated over a whole run.
 */
#ifndef LOOM_DATA_PLAN_H
#define LOOM_DATA_PLAN_H

/* argv[0] is "plan"; returns the exit status (bad input exits 2). */
int data_plan_main(int argc, char **argv);

#endif
